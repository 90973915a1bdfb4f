"""Optimizers named by import path: a user's own class, or another package's implementation.

``optimizer=custom optimizer.target=pkg.module.Class`` (or a peer yaml such as
``optimizer=heavyball_soap``) builds ``pkg.module.Class`` exactly as a registered optimizer is built:
its keyword arguments are the further ``optimizer.*`` keys, checked against the class's signature;
from a model, ``main_roles`` and a ``companion`` split the parameters as for Muon.

The config keys that describe *where the class comes from* rather than how it trains:

* ``target``: ``pkg.module.Class`` (or a function returning an optimizer), importable through
  ``PYTHONPATH`` or an installed package;
* ``package``: the pip requirement that provides it (``heavyball==3.2.1``), named when the import fails
  and compared with the installed version;
* ``extra``: the soapbench extra that installs it (``peers``), named instead when set;
* ``strict_kwargs``: a class whose signature lists its keywords *and* takes ``**kwargs``
  (pytorch-optimizer's and heavyball's do) still has unknown names rejected, because a typo would
  otherwise be swallowed silently; ``false`` passes them through to ``**kwargs``;
* ``settings``: module attributes set before the class is built (``heavyball.utils.compile_mode: null``
  runs heavyball eagerly);
* ``implements``: the registered algorithm it is an implementation of (``soap``), whose golden trajectories
  ``check-optimizer`` holds it to.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import torch

from soapbench.optimizers.param_groups import ALL_ROLES
from soapbench.optimizers.spec import OptimizerConfigError, OptimizerSpec

# Keys of an optimizer config that are not constructor keywords.
SOURCE_KEYS = ("target", "package", "extra", "strict_kwargs", "settings", "implements")


def _requirement_name(package: str) -> str:
    for separator in ("==", ">=", "<=", "~=", "<", ">", "["):
        package = package.split(separator)[0]
    return package.strip()


def install_hint(module: str, package: str | None, extra: str | None) -> str:
    if extra:
        return f'install the {extra!r} extra: pip install -e ".[{extra}]"'
    if package:
        return f"pip install '{package}'"
    return f"pip install the package that provides {module.split('.')[0]!r}, or put its directory on PYTHONPATH"


def import_target(
    target: str, *, package: str | None = None, extra: str | None = None, field: str = "optimizer.target"
):
    """The object named by ``pkg.module.Attr``; a failure is one line naming the module and what to install."""
    if not isinstance(target, str) or "." not in target.strip("."):
        raise OptimizerConfigError(
            f"{field}: {target!r} is not an import path; give pkg.module.Class, e.g. torch.optim.SGD"
        )
    module_name, _, attribute = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise OptimizerConfigError(
            f"{field}: cannot import module {module_name!r} ({error}); {install_hint(module_name, package, extra)}"
        ) from error
    except Exception as error:  # the module exists but raised while importing
        raise OptimizerConfigError(
            f"{field}: importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from error
    if not hasattr(module, attribute):
        public = sorted(
            n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
        )
        raise OptimizerConfigError(
            f"{field}: module {module_name!r} has no {attribute!r}"
            + (f"; its optimizers: {', '.join(public)}" if public else "")
        )
    return getattr(module, attribute)


def installed_version(package: str | None, target: str) -> str | None:
    """Version of the distribution that provides ``target`` (the ``package`` requirement if given)."""
    candidates = [_requirement_name(package)] if package else []
    top = target.split(".")[0]
    candidates += metadata.packages_distributions().get(top, [])
    for name in candidates:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def version_mismatch(package: str | None, target: str) -> str | None:
    """A warning when the installed version is not the one the config was written for (``package: x==1.2``)."""
    if not package or "==" not in package:
        return None
    wanted = package.split("==", 1)[1].strip()
    found = installed_version(package, target)
    if found is not None and found != wanted:
        return f"{_requirement_name(package)} {found} is installed; this config was written for {wanted} (defaults may differ)"
    return None


def apply_settings(
    settings: Mapping[str, Any] | None,
    field: str = "optimizer.settings",
    *,
    package: str | None = None,
    extra: str | None = None,
) -> None:
    for path, value in (settings or {}).items():
        owner_path, _, attribute = path.rpartition(".")
        try:
            owner = importlib.import_module(owner_path)
        except ImportError as error:
            # the library itself is missing, more often than not: say how to get it, as for the target
            raise OptimizerConfigError(
                f"{field}.{path}: cannot import {owner_path!r} ({error}); "
                f"{install_hint(owner_path.split('.')[0], package, extra)}"
            ) from error
        if not hasattr(owner, attribute):
            raise OptimizerConfigError(f"{field}.{path}: {owner_path!r} has no attribute {attribute!r}")
        setattr(owner, attribute, value)


def imported_spec(
    target: str,
    *,
    name: str | None = None,
    package: str | None = None,
    extra: str | None = None,
    strict_kwargs: bool = True,
    settings: Mapping[str, Any] | None = None,
    implements: str | None = None,
    field: str = "optimizer",
) -> OptimizerSpec:
    """The spec of ``target``, built from the source keys of its config (``implements`` is read by check-optimizer
    from the yaml; it does not change how the optimizer is built)."""
    apply_settings(settings, f"{field}.settings", package=package, extra=extra)
    factory = import_target(target, package=package, extra=extra, field=f"{field}.target")
    if isinstance(factory, type) and not issubclass(factory, torch.optim.Optimizer):
        raise OptimizerConfigError(f"{field}.target: {target} is a class but not a torch.optim.Optimizer subclass")
    if not callable(factory):
        raise OptimizerConfigError(f"{field}.target: {target} is not a class or a function")
    label = name or default_label(target)
    return OptimizerSpec(
        name=label, factory=factory, main_roles=ALL_ROLES, target=target, strict_kwargs=bool(strict_kwargs)
    )


def default_label(target: str) -> str:
    """Run and report label of an imported optimizer without a ``name``: torch.optim.SGD -> sgd."""
    return target.rpartition(".")[2].lower()


def with_label(config: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer config with its ``name`` filled in (an imported class without one gets its class name)."""
    config = dict(config)
    if not config.get("name") and config.get("target"):
        config["name"] = default_label(str(config["target"]))
    return config


def describe_source(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a run records about an imported optimizer: its import path, package and installed version."""
    target = config.get("target")
    if not target:
        return None
    package = config.get("package")
    return {
        "target": target,
        "package": package,
        "installed_version": installed_version(package, str(target)),
        "warning": version_mismatch(package, str(target)),
    }
