"""What an optimizer is to the registry and to an import path (:mod:`soapbench.optimizers.registry`, :mod:`soapbench.optimizers.imported`):
its spec (factory, roles, companion) and the one-line error for a bad name or hyperparameter."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


class OptimizerConfigError(ValueError):
    """A bad optimizer name or hyperparameter; the message names the field and the fix."""


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    factory: Callable[..., torch.optim.Optimizer]
    # Parameter roles this optimizer trains when built from a model; the rest go to the companion.
    main_roles: tuple[str, ...]
    # Registered name of the default companion optimizer (used only if some role is left over).
    companion: str = "adamw"
    # Import path for an optimizer from outside the registry (soapbench.optimizers.imported); None for registered ones.
    target: str | None = None
    # With **kwargs in the signature beside named keywords, still reject names that are not listed.
    strict_kwargs: bool = True

    def _keywords(self) -> tuple[list[str], bool]:
        try:
            signature = inspect.signature(self.factory)
        except (TypeError, ValueError):  # some C-implemented callables have none
            return [], True
        names, var_keyword = [], False
        for position, (name, p) in enumerate(signature.parameters.items()):
            if p.kind is p.VAR_KEYWORD:
                var_keyword = True
            elif position == 0 and name in ("params", "param_groups", "parameters"):
                continue
            elif name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                names.append(name)
        return names, var_keyword

    def hyperparameter_names(self) -> list[str]:
        return self._keywords()[0]

    def unknown_hyperparameters(self, hparams: Iterable[str]) -> list[str]:
        """Names the factory does not take; none when it takes **kwargs and lists no keywords (or is not strict)."""
        names, var_keyword = self._keywords()
        if var_keyword and (not names or not self.strict_kwargs):
            return []
        return sorted(set(hparams) - set(names))
