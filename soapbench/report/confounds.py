"""How each arm treats the parameters the compared optimizer does not own, read from the runs' config.yaml.

An arm's optimizer trains the parameter roles in its ``main_roles`` (the config's, else its registry
default); the other roles go to a companion (AdamW unless configured), which takes the main
optimizer's lr and weight decay unless the config sets its own (``soapbench.optimizers.registry.build_optimizer``).
Two arms that differ in any of these, or in the weight decay applied per step (lr × weight_decay, the
decoupled decay each step multiplies the weights by), differ in more than the optimizer being compared:
:func:`confounds` names every such difference, and the report prints it beside the verdict.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from soapbench.optimizers.param_groups import ALL_ROLES, DEFAULT_WEIGHT_DECAY_ROLES
from soapbench.optimizers.registry import get_spec


def _defaults(name: str) -> dict[str, Any]:
    """The constructor defaults of a registered optimizer ({} when it is not registered here)."""
    try:
        factory = get_spec(name).factory
    except (KeyError, ValueError):
        return {}
    return {
        k: p.default
        for k, p in inspect.signature(factory).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _main_roles(name: str, configured: Any) -> tuple[str, ...]:
    if configured is not None:
        return tuple(configured)
    try:
        return tuple(get_spec(name).main_roles)
    except (KeyError, ValueError):
        return ALL_ROLES


def treatment(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of one run that the arms of a comparison should share (see the module docstring)."""
    optimizer = dict(config.get("optimizer") or {})
    name = str(optimizer.get("name"))
    main = _main_roles(name, optimizer.get("main_roles"))
    lr, wd = optimizer.get("lr"), optimizer.get("weight_decay", _defaults(name).get("weight_decay"))
    trainer = config.get("trainer") or {}
    out: dict[str, Any] = {
        "roles to the companion": tuple(r for r in ALL_ROLES if r not in main) or "none",
        "weight decay per step (lr × wd)": _product(lr, wd),
        "weight_decay_roles": tuple(trainer.get("weight_decay_roles") or DEFAULT_WEIGHT_DECAY_ROLES),
    }
    if out["roles to the companion"] == "none":
        return out
    companion = dict(optimizer.get("companion") or {})
    companion_name = str(companion.get("name") or _companion_default(name))
    defaults = _defaults(companion_name)
    companion_lr = companion.get("lr", lr)
    companion_wd = companion.get("weight_decay", optimizer.get("weight_decay", defaults.get("weight_decay")))
    out.update(
        {
            "companion": companion_name,
            "companion lr": companion_lr,
            "companion weight_decay": companion_wd,
            "companion betas": tuple(companion.get("betas", defaults.get("betas", ()))),
            "companion weight decay per step": _product(companion_lr, companion_wd),
        }
    )
    return out


def _companion_default(name: str) -> str:
    try:
        return get_spec(name).companion
    except (KeyError, ValueError):
        return "adamw"


def _product(a: Any, b: Any) -> float | None:
    return float(a) * float(b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-15)
    return a == b


def confounds(arm: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, this arm's value, the baseline's) for every treatment setting in which the two differ."""
    return [
        (key, arm.get(key, "–"), baseline.get(key, "–"))
        for key in dict.fromkeys([*arm, *baseline])
        if not _same(arm.get(key), baseline.get(key))
    ]
