"""What ``check-optimizer`` checks: a registered name, an optimizer yaml, or any class by import path.

``soap`` (registered) and ``heavyball_soap`` (a yaml in ``configs/optimizer/``) take the yaml's hyperparameters;
``pkg.module.Class`` takes the class's defaults. ``--kwargs k=v`` overrides either. The same target is then
trained through the trainer with the matching overrides (``optimizer=soap ++optimizer.k=v`` or
``optimizer=custom optimizer.target=pkg.module.Class ++optimizer.k=v``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from soapbench import composition
from soapbench.errors import ConfigError
from soapbench.optimizers.registry import check_hyperparameters, resolve_spec, split_optimizer_config

CONFIG_DIR = composition.CONFIG_DIR / "optimizer"


@dataclass
class Target:
    label: str  # as in run names and reports
    description: str  # what was resolved, with its version
    factory: Callable[..., torch.optim.Optimizer]  # f(params, **kwargs)
    kwargs: dict[str, Any]
    train_overrides: list[str]  # scripts/train.py overrides that train this optimizer with these kwargs
    registered: str | None = None  # registry name, for golden parity
    family: str | None = None  # the algorithm it implements (its yaml's implements: soap), for golden parity
    notes: list[str] = field(default_factory=list)


def parse_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs, values read as YAML (``0.9``, ``[0.9,0.95]``, ``true``, ``null``)."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--kwargs: {pair!r} is not name=value (e.g. lr=1e-3 betas=[0.9,0.95])")
        parsed[key] = yaml.safe_load(value)
    return parsed


def _as_override(key: str, value: Any) -> str:
    return f"++optimizer.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def resolve_target(name: str, kwargs: dict[str, Any]) -> Target:
    """Bad input raises ConfigError or OptimizerConfigError (one line each)."""
    from soapbench.optimizers import available_optimizers
    from soapbench.optimizers.imported import describe_source

    yaml_path = CONFIG_DIR / f"{name}.yaml"
    if yaml_path.is_file() and name != "custom":
        config = OmegaConf.to_container(OmegaConf.load(yaml_path), resolve=True)
        label, hparams, build_args = split_optimizer_config(config)
        spec = resolve_spec(label, build_args.get("source"))
        check_hyperparameters(spec, kwargs, "--kwargs ", passthrough_hint=False)
        source = describe_source(config)
        description = (
            f"{spec.target} ({source['package']}; installed {source['installed_version']})" if source else "registered"
        )
        notes = []
        if build_args.get("main_roles"):
            notes.append(f"trains {', '.join(build_args['main_roles'])} from a model; the contract drives it directly")
        return Target(
            label=str(label), description=f"{name}: {description}", factory=spec.factory,
            kwargs={**hparams, **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}},
            train_overrides=[f"optimizer={name}", *(_as_override(k, v) for k, v in kwargs.items())],
            registered=name if name in available_optimizers() else None,
            family=config.get("implements"), notes=notes,
        )  # fmt: skip
    if "." not in name:
        options = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "custom")
        raise ConfigError(
            f"optimizer: {name!r} is neither an optimizer yaml ({', '.join(options)}) nor an import path pkg.module.Class"
        )
    spec = resolve_spec(None, {"target": name})
    check_hyperparameters(spec, kwargs, "--kwargs ", passthrough_hint=False)
    source = describe_source({"target": name})
    version = f" (installed {source['installed_version']})" if source["installed_version"] else ""
    return Target(
        label=spec.name, description=f"{name}{version}", factory=spec.factory,
        kwargs={k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()},
        train_overrides=["optimizer=custom", f"optimizer.target={name}", *(_as_override(k, v) for k, v in kwargs.items())],
    )  # fmt: skip
