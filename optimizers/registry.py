"""Optimizer registry: one module + one yaml adds an optimizer to the harness.

An optimizer module registers its class (or a factory function) with
``@register_optimizer("name", main_roles=...)``. The trainer calls
``build_optimizer(name, model_or_params, **hparams)``:

* given an iterable of parameters or param-group dicts, the registered class is
  constructed on them unchanged (this is how golden tests drive optimizers);
* given an ``nn.Module``, the parameters are split by role (see
  :mod:`soapbench.optimizers.param_groups`). Roles listed in the optimizer's ``main_roles``
  go to it; the others go to a *companion* optimizer (AdamW unless configured),
  which is how Muon and SOAP-Muon train embeddings, the head and 1-D parameters,
  as their papers do. Weight decay is applied to the roles in
  ``weight_decay_roles`` only (matrices by default).

Hyperparameter names are the reference implementations' keyword names, so an
unknown name is an error that lists the valid ones.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from soapbench.optimizers.param_groups import ALL_ROLES, DEFAULT_WEIGHT_DECAY_ROLES, parameter_roles
from soapbench.optimizers.spec import OptimizerConfigError, OptimizerSpec

_REGISTRY: dict[str, OptimizerSpec] = {}


def register_optimizer(
    name: str, *, main_roles: Iterable[str] = ALL_ROLES, companion: str = "adamw"
) -> Callable[[Callable[..., torch.optim.Optimizer]], Callable[..., torch.optim.Optimizer]]:
    """Class/function decorator that makes ``name`` available to configs and ``build_optimizer``."""
    roles = tuple(main_roles)
    unknown = set(roles) - set(ALL_ROLES)
    if unknown:
        raise ValueError(f"register_optimizer({name!r}): unknown roles {sorted(unknown)}; valid: {list(ALL_ROLES)}")

    def decorate(factory):
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"optimizer name {name!r} is registered twice")
        _REGISTRY[name] = OptimizerSpec(name=name, factory=factory, main_roles=roles, companion=companion)
        return factory

    return decorate


def available_optimizers() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> OptimizerSpec:
    if name not in _REGISTRY:
        raise OptimizerConfigError(
            f"optimizer.name: unknown optimizer {name!r}; valid: {', '.join(available_optimizers())} "
            "(any other class: optimizer=custom optimizer.target=pkg.module.Class)"
        )
    return _REGISTRY[name]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_kind(default: Any, value: Any, field: str) -> None:
    """``value`` must be of the kind of the factory's default: a finite number, a flag, or as many values."""
    if isinstance(value, torch.Tensor):
        return  # a tensor lr (torch's capturable API): the optimizer checks it
    if _is_number(default):
        if not _is_number(value):
            raise OptimizerConfigError(f"{field}: expected a number (like {default!r}), got {value!r}")
        if not math.isfinite(value):
            raise OptimizerConfigError(f"{field}: must be a finite number, got {value!r}")
    elif isinstance(default, bool) and not isinstance(value, bool):
        raise OptimizerConfigError(f"{field}: expected true or false, got {value!r}")
    elif isinstance(default, tuple) and value is not None:
        if not isinstance(value, (tuple, list)) or len(value) != len(default):
            raise OptimizerConfigError(f"{field}: expected {len(default)} values like {list(default)}, got {value!r}")
        for index, (item_default, item) in enumerate(zip(default, value)):
            _check_kind(item_default, item, f"{field}[{index}]")


def _check_kinds(spec: OptimizerSpec, hparams: Mapping[str, Any], field_prefix: str) -> None:
    try:
        parameters = inspect.signature(spec.factory).parameters
    except (TypeError, ValueError):  # no introspectable signature: the factory checks its own arguments
        return
    for name, value in hparams.items():
        default = parameters[name].default if name in parameters else None  # **kwargs pass-through: unchecked
        if default is not inspect.Parameter.empty and default is not None:
            _check_kind(default, value, f"{field_prefix}{name}")


def resolve_spec(name: str | None, source: Mapping[str, Any] | None = None, field: str = "optimizer") -> OptimizerSpec:
    """The registered optimizer ``name``, or, when ``source`` has a ``target``, the class at that import path."""
    source = dict(source or {})
    if source.get("target"):
        from soapbench.optimizers.imported import imported_spec

        return imported_spec(name=name, field=field, **source)
    if not name:
        raise OptimizerConfigError(f"{field}.name: missing; pick a config with optimizer=<name> or set {field}.target")
    return get_spec(name)


def split_optimizer_config(config: Mapping[str, Any]) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """An optimizer config section -> (name, constructor hyperparameters, build_optimizer's other arguments).

    Lists become tuples (betas and friends: references expect tuples)."""
    from soapbench.optimizers.imported import SOURCE_KEYS

    hparams = dict(config)
    name = hparams.pop("name", None)
    build_args: dict[str, Any] = {}
    source = {key: hparams.pop(key) for key in SOURCE_KEYS if key in hparams}
    if source.get("target"):
        build_args["source"] = source
    for key in ("companion", "main_roles"):
        value = hparams.pop(key, None)
        if value is not None:
            build_args[key] = dict(value) if key == "companion" else list(value)
    hparams = {key: tuple(value) if isinstance(value, list) else value for key, value in hparams.items()}
    return name, hparams, build_args


def check_hyperparameters(
    spec: OptimizerSpec, hparams: Iterable[str], field_prefix: str = "optimizer.", passthrough_hint: bool = True
) -> None:
    """An unknown name is one error naming it and listing the valid ones."""
    unknown = spec.unknown_hyperparameters(hparams)
    if unknown:
        where = spec.target or spec.name
        passthrough = ""
        if passthrough_hint and spec._keywords()[1]:
            passthrough = f" (or {field_prefix}strict_kwargs=false to pass it to **kwargs)"
        raise OptimizerConfigError(
            f"{field_prefix}{unknown[0]}: not a hyperparameter of {where}; valid: {', '.join(spec.hyperparameter_names())}"
            + passthrough
        )


def _construct(spec: OptimizerSpec, params: Any, hparams: Mapping[str, Any], field_prefix: str):
    check_hyperparameters(spec, hparams, field_prefix)
    _check_kinds(spec, hparams, field_prefix)
    try:
        optimizer = spec.factory(params, **hparams)
    except (ValueError, TypeError) as error:
        raise OptimizerConfigError(f"{field_prefix.rstrip('.')} ({spec.target or spec.name}): {error}") from error
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise OptimizerConfigError(
            f"{field_prefix}target: {spec.target or spec.name} returned {type(optimizer).__name__}, not a torch.optim.Optimizer"
        )
    return optimizer


def _groups(
    named: list[tuple[str, nn.Parameter, str]], weight_decay_roles: Iterable[str], weight_decay: float | None
) -> list[dict]:
    decay_roles = set(weight_decay_roles)
    decayed = [p for _, p, role in named if role in decay_roles]
    undecayed = [p for _, p, role in named if role not in decay_roles]
    groups = []
    if decayed:
        groups.append(
            {"params": decayed} if weight_decay is None else {"params": decayed, "weight_decay": weight_decay}
        )
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    return groups


def build_optimizer(
    name: str,
    model_or_params: nn.Module | Iterable,
    *,
    companion: Mapping[str, Any] | None = None,
    main_roles: Iterable[str] | None = None,
    weight_decay_roles: Iterable[str] = DEFAULT_WEIGHT_DECAY_ROLES,
    source: Mapping[str, Any] | None = None,
    **hparams: Any,
) -> torch.optim.Optimizer:
    """Build a registered optimizer, or with ``source={"target": "pkg.module.Class", ...}`` any class by import path
    (``name`` is then its label; see :mod:`soapbench.optimizers.imported`).

    ``companion`` (models only): ``{"name": ..., **hparams}`` (or ``{"target": ..., **hparams}``) for the
    parameters outside ``main_roles``; defaults to the spec's companion with its defaults, taking this
    optimizer's ``lr`` and ``weight_decay`` when not given.
    """
    spec = resolve_spec(name, source)
    if not isinstance(model_or_params, nn.Module):
        return _construct(spec, model_or_params, hparams, "optimizer.")

    roles = parameter_roles(model_or_params)
    trainable = [(n, p, roles[n]) for n, p in model_or_params.named_parameters() if p.requires_grad]
    main_role_set = set(spec.main_roles if main_roles is None else main_roles)
    unknown = main_role_set - set(ALL_ROLES)
    if unknown:
        raise OptimizerConfigError(f"optimizer.main_roles: unknown roles {sorted(unknown)}; valid: {list(ALL_ROLES)}")
    main = [item for item in trainable if item[2] in main_role_set]
    rest = [item for item in trainable if item[2] not in main_role_set]

    weight_decay = hparams.get("weight_decay")
    main_optimizer = _construct(spec, _groups(main, weight_decay_roles, weight_decay), hparams, "optimizer.")
    if not rest:
        return main_optimizer

    companion = dict(companion or {})
    if not companion.get("target"):
        companion.setdefault("name", spec.companion)
    companion_name, companion_hparams, companion_args = split_optimizer_config(companion)
    companion_spec = resolve_spec(companion_name, companion_args.get("source"), "optimizer.companion")
    companion_names = companion_spec.hyperparameter_names()
    for shared in ("lr", "weight_decay"):
        if shared not in companion_hparams and shared in hparams and shared in companion_names:
            companion_hparams[shared] = hparams[shared]
    companion_optimizer = _construct(
        companion_spec,
        _groups(rest, weight_decay_roles, companion_hparams.get("weight_decay")),
        companion_hparams,
        "optimizer.companion.",
    )
    from soapbench.optimizers.composite import CompositeOptimizer

    return CompositeOptimizer({spec.name: main_optimizer, f"companion_{companion_spec.name}": companion_optimizer})
