"""Model registry: ``configs/model/<preset>.yaml`` names an ``arch`` and its keyword arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn


class ModelConfigError(ValueError):
    """A bad model preset or argument; the message names the field and the fix."""


_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_model(arch: str):
    def decorate(factory):
        _ARCHITECTURES[arch] = factory
        return factory

    return decorate


def available_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Build from a model config: ``arch`` picks the factory; ``name`` (the preset) is ignored here."""
    config = dict(config)
    config.pop("name", None)
    arch = config.pop("arch", None)
    if arch not in _ARCHITECTURES:
        raise ModelConfigError(
            f"model.arch: unknown architecture {arch!r}; valid: {', '.join(available_architectures())}"
        )
    factory = _ARCHITECTURES[arch]
    valid = [n for n in inspect.signature(factory).parameters if n != "self"]
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ModelConfigError(f"model.{unknown[0]}: not an argument of {arch}; valid: {', '.join(valid)}")
    try:
        return factory(**config)
    except (ValueError, TypeError) as error:
        raise ModelConfigError(f"model ({arch}): {error}") from error
