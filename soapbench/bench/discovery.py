"""Import every module of a package, so the decorators in them register their optimizers or models."""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str) -> dict[str, str]:
    """Import every module of a package (their decorators register optimizers/models); return failures by module."""
    package = importlib.import_module(package_name)
    failures: dict[str, str] = {}
    for module in pkgutil.iter_modules(package.__path__):
        qualified = f"{package_name}.{module.name}"
        try:
            importlib.import_module(qualified)
        except Exception as error:  # a half-written drop-in must not take the benchmark down
            failures[qualified] = f"{type(error).__name__}: {error}"
    return failures
