"""Which optimizers and model presets the benchmarks use, and with which settings.

Optimizers: every name in the registry after importing every module of the ``optimizers`` package, so a module
that registers itself with ``@register_optimizer`` is benchmarked even before ``optimizers/__init__.py`` imports it
(a module that fails to import is reported, not fatal). Settings: ``configs/optimizer/<name>.yaml`` parsed by the
trainer's own parser, so the benchmark builds exactly what a run builds; a registered optimizer without a yaml
(a user's drop-in) runs with its constructor defaults.

Model presets: ``configs/model/<preset>.yaml`` composed into the train config with Hydra, so presets that
interpolate the data (nanogpt_char's ``vocab_size: ${data.vocab_size}``) resolve as they do in a run.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from soapbench.bench.discovery import import_submodules
from soapbench.composition import CONFIG_DIR
from soapbench.composition import compose_resolved as compose  # the benchmarks' configs are train.py's


def discover_optimizers() -> tuple[list[str], dict[str, str]]:
    """All registered optimizer names, and the ``optimizers`` modules that failed to import."""
    failures = import_submodules("soapbench.optimizers")
    from soapbench.optimizers import available_optimizers

    return available_optimizers(), failures


def select_optimizers(requested: str, available: Sequence[str]) -> list[str]:
    """``"all"`` or a comma-separated list of registered names (an unknown name is an error naming the valid ones)."""
    if requested.strip() == "all":
        return list(available)
    names = [name.strip() for name in requested.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"--optimizers: unknown optimizer(s) {', '.join(unknown)}; registered: {', '.join(available)}")
    return names


def _constructor_defaults(factory: Any) -> dict[str, Any]:
    signature = inspect.signature(factory)
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if name not in ("self", "params") and p.default is not inspect.Parameter.empty
    }


@dataclass(frozen=True)
class OptimizerSetup:
    """One optimizer as the trainer builds it: registry name, constructor keywords, companion and role split."""

    name: str
    hparams: dict[str, Any]
    build_args: dict[str, Any]
    source: str
    main_roles: tuple[str, ...]
    weight_decay_roles: tuple[str, ...]
    companion_name: str
    companion_hparams: dict[str, Any] = field(default_factory=dict)

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        from soapbench.optimizers import build_optimizer

        return build_optimizer(
            self.name, model, weight_decay_roles=self.weight_decay_roles, **self.build_args, **self.hparams
        )

    def effective_hparams(self) -> dict[str, Any]:
        """Constructor defaults overlaid with the configured values: every knob the algorithm will run with."""
        from soapbench.optimizers import get_spec

        return {**_constructor_defaults(get_spec(self.name).factory), **self.hparams}

    def effective_companion_hparams(self) -> dict[str, Any]:
        from soapbench.optimizers import get_spec

        return {**_constructor_defaults(get_spec(self.companion_name).factory), **self.companion_hparams}

    @property
    def precondition_frequency(self) -> int | None:
        value = self.effective_hparams().get("precondition_frequency")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source, "hparams": _jsonable(self.hparams), "main_roles": list(self.main_roles),
            "companion": {"name": self.companion_name, **_jsonable(self.companion_hparams)},
        }  # fmt: skip


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def optimizer_setup(name: str, weight_decay_roles: Sequence[str] = ("matrix", "head", "input")) -> OptimizerSetup:
    """The settings a run with ``optimizer=<name>`` uses (its yaml), or constructor defaults when it has no yaml."""
    from soapbench.optimizers import get_spec
    from soapbench.optimizers.registry import (
        split_optimizer_config,  # the trainer's parser: tuples for lists, companion split off
    )

    spec = get_spec(name)
    path = CONFIG_DIR / "optimizer" / f"{name}.yaml"
    if path.exists():
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        registry_name, hparams, build_args = split_optimizer_config(raw)
        if registry_name != name:
            raise ValueError(f"{path}: name is {registry_name!r}, expected {name!r}")
        source = str(path.relative_to(CONFIG_DIR.parent))
    else:
        hparams, build_args, source = {}, {}, "constructor defaults (no configs/optimizer yaml)"
    companion = dict(build_args.get("companion") or {})
    companion_name = companion.pop("name", spec.companion)
    companion_names = get_spec(companion_name).hyperparameter_names()
    for shared in ("lr", "weight_decay"):  # as build_optimizer passes them on
        if shared not in companion and shared in hparams and shared in companion_names:
            companion[shared] = hparams[shared]
    companion = {key: tuple(value) if isinstance(value, list) else value for key, value in companion.items()}
    main_roles = tuple(build_args.get("main_roles") or spec.main_roles)
    return OptimizerSetup(
        name=name, hparams=hparams, build_args=build_args, source=source, main_roles=main_roles,
        weight_decay_roles=tuple(weight_decay_roles), companion_name=companion_name, companion_hparams=companion,
    )  # fmt: skip


def preset_config(preset: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The composed config of ``model=<preset>`` plus overrides such as ``model.n_layer=2``."""
    if not (CONFIG_DIR / "model" / f"{preset}.yaml").exists():
        available = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))
        raise ValueError(f"--model: no preset {preset!r}; available: {', '.join(available)}")
    return compose([f"model={preset}", *overrides])


class BenchInputError(ValueError):
    """A benchmark argument that cannot be used; the message names it."""


@dataclass
class BenchInputs:
    """What a benchmark script's arguments resolve to."""

    names: list[str]
    config: dict[str, Any]
    setups: list[OptimizerSetup]
    device: torch.device
    params: int
    import_failures: dict[str, str]


def resolve_inputs(model: str, overrides: Sequence[str], optimizers: str, device: str) -> BenchInputs:
    """Resolve a benchmark's arguments before anything runs or is written.

    Bad input raises :class:`BenchInputError` with one line naming the argument: an unknown optimizer or
    preset, an override Hydra rejects, a model config the model refuses, or an unavailable device.
    """
    from hydra.errors import HydraException

    from soapbench.bench.shapes import build_preset_model, param_infos
    from soapbench.environment import resolve_device
    from soapbench.errors import SoapbenchError

    available, import_failures = discover_optimizers()
    try:
        names = select_optimizers(optimizers, available)
        config = preset_config(model, overrides)
        setups = [optimizer_setup(name, config["trainer"]["weight_decay_roles"]) for name in names]
        resolved_device = resolve_device(device)
        params = sum(info.numel for info in param_infos(build_preset_model(config["model"], "meta")))
    except (ValueError, SoapbenchError, HydraException) as error:
        raise BenchInputError(" ".join(line.strip() for line in str(error).splitlines() if line.strip())) from error
    return BenchInputs(names, config, setups, resolved_device, params, import_failures)
