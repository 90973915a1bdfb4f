"""The optimizer contract: what a ``torch.optim.Optimizer`` must do to be dropped into anyone's training code,
checked the way PyTorch's own optimizer tests check torch's optimizers, on any optimizer class or factory.

Usage::

    from soapbench.contract import run_contract, registered_info
    results = run_contract(MyOptimizer, {"lr": 1e-3})        # one input: these kwargs
    results = run_contract(registered_info("soap"))           # every input of soapbench's SOAP entry
    failed = [r for r in results if r.status == "fail"]

API:

``run_contract(optimizer, kwargs=None, *, dtypes=(float32, float64), categories=None, device="cpu",
matrices_only=None) -> list[Result]``
    ``optimizer`` is an ``OptimizerInfo`` (torch's, from ``torch.testing._internal.common_optimizers``, or a
    :class:`ContractInfo`), or an optimizer class / factory ``f(params, **kwargs)``; with a class, ``kwargs``
    is its one input, and ``matrices_only`` (None: probed by constructing it on a vector) says whether it
    accepts parameters with fewer than 2 dims. ``categories`` picks from :data:`CATEGORIES` (default: all).
    Every check runs on its own; a crash is a failure, never an exception out of ``run_contract``.

``Result(category, name, status, reason)``
    ``status`` is ``"pass"``, ``"fail"`` or ``"skip"``; ``name`` says which check, input and dtype;
    ``reason`` is the failure (or why it was skipped), empty on a pass.

``registered_info(name)``, ``registered_infos()``
    The ``OptimizerInfo`` of a soapbench-registered optimizer, with inputs exercising its real options.

``summarize(results) -> dict[category, status]``
    One status per category: ``fail`` if any check failed, ``pass`` if any passed, else ``skip``.

Categories (:data:`CATEGORIES`), each a set of checks on a small separable least-squares problem with matrices,
a conv kernel and (unless matrices-only) a vector:

* ``convergence``: the loss falls over 15 ``step(closure)`` calls, with no scheduler and with each of the
  ``OptimizerInfo``'s schedulers; ``step`` returns the closure's loss.
* ``param_groups``: a group with lr 0 stays put while the other trains; a group's own lr and weight_decay give
  exactly what a separate optimizer built with them gives.
* ``zero_grad``: steps on all-zero gradients with weight_decay 0 leave the parameters unchanged.
* ``grads_untouched``: ``step`` never writes into ``p.grad``.
* ``state_dict``: save (``torch.save``, ``torch.load(weights_only=True)``), load into a fresh optimizer, continue:
  parameters and state bit-identical to never stopping; the same with named parameters, and from an older
  format (no ``param_names``; ``step`` as a tensor where the optimizer keeps a number and vice versa); a
  float32 checkpoint loads into float64 parameters (and the reverse) with the state dtypes of a fresh run.
* ``hooks``: step pre/post hooks run once per step around the update; state_dict pre/post hooks (the post-hook's
  result is what ``state_dict()`` returns); load_state_dict pre-hooks' returned state is what is loaded, and
  post-hooks' changes stay.
* ``deepcopy``: a deep copy continues bit-identically without sharing state.
* ``tensor_lr``: a 0-dim or 1-element tensor lr trains as the float it holds, also while StepLR updates it in
  place; a multi-element tensor lr is a ``ValueError("Tensor lr must be 1-element")`` at construction.
* ``errors``: every ``ErrorOptimizerInput`` (torch's generic ones plus the optimizer's own) on its own raises its
  error type with a matching message, at construction or at ``step`` as declared.

Importing this package imports torch's test helpers once (about 2 s; they need ``expecttest``), with their side
effects undone (see :mod:`soapbench.contract.torch_testing`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from soapbench.contract.checks import CHECKS, Case, Skip, run_error_input
from soapbench.contract.problem import make_problem
from soapbench.contract.registered import ContractInfo, ContractInput, generic_error_inputs, registered_info
from soapbench.contract.torch_testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput

CATEGORIES = (*CHECKS, "errors")
STATUSES = ("pass", "fail", "skip")


@dataclass(frozen=True)
class Result:
    category: str
    name: str
    status: str  # "pass" | "fail" | "skip"
    reason: str = ""


def registered_infos() -> list[ContractInfo]:
    from soapbench.optimizers import available_optimizers

    return [registered_info(name) for name in available_optimizers()]


def info_for(
    optimizer: Callable[..., torch.optim.Optimizer],
    kwargs: Mapping[str, Any] | None = None,
    *,
    matrices_only: bool | None = None,
) -> ContractInfo:
    """An ``OptimizerInfo`` for any optimizer class or factory, with ``kwargs`` as its only input."""
    if matrices_only is None:
        matrices_only = not _accepts_vectors(optimizer, dict(kwargs or {}))
    name = getattr(optimizer, "__name__", type(optimizer).__name__)
    return ContractInfo(
        optimizer,
        name=name,
        matrices_only=matrices_only,
        optim_inputs_func=lambda device=None, dtype=None: [ContractInput(dict(kwargs or {}), "given kwargs")],
        optim_error_inputs_func=generic_error_inputs,
        supported_impls=(),
        supports_complex=False,
    )


def _accepts_vectors(optimizer: Callable, kwargs: dict[str, Any]) -> bool:
    try:
        optimizer([torch.nn.Parameter(torch.zeros(3))], **kwargs)
    except (ValueError, TypeError, RuntimeError):
        return False
    return True


def run_contract(
    optimizer: OptimizerInfo | Callable[..., torch.optim.Optimizer],
    kwargs: Mapping[str, Any] | None = None,
    *,
    dtypes: Iterable[torch.dtype] = (torch.float32, torch.float64),
    categories: Iterable[str] | None = None,
    device: str = "cpu",
    matrices_only: bool | None = None,
) -> list[Result]:
    """Run the contract's checks (module docstring) and return one :class:`Result` per check, input and dtype."""
    info = (
        optimizer if isinstance(optimizer, OptimizerInfo) else info_for(optimizer, kwargs, matrices_only=matrices_only)
    )
    if isinstance(optimizer, OptimizerInfo) and kwargs:
        raise ValueError("kwargs go with an optimizer class or factory; an OptimizerInfo carries its own inputs")
    wanted = list(CATEGORIES if categories is None else categories)
    unknown = [category for category in wanted if category not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown contract categories {unknown}; valid: {', '.join(CATEGORIES)}")
    dtypes = list(dtypes)
    results: list[Result] = []
    for category in wanted:
        if category == "errors":
            results.extend(_error_results(info, dtypes[0], device))
            continue
        for dtype in dtypes:
            for optim_input in info.optim_inputs_func(device, dtype):
                case = Case(info, optim_input, dtype, device)
                for label, check in CHECKS[category]:
                    results.append(_run_one(category, f"{label}: {case.label}", lambda: check(case)))
    return results


def _run_one(category: str, name: str, function: Callable[[], None]) -> Result:
    try:
        function()
    except Skip as skip:
        return Result(category, name, "skip", str(skip))
    except AssertionError as error:
        return Result(category, name, "fail", str(error) or "assertion failed")
    except Exception as error:  # noqa: BLE001 -- a crash is a contract failure, reported with where it happened
        where = traceback.extract_tb(error.__traceback__)[-1]
        return Result(category, name, "fail", f"{type(error).__name__}: {error} ({where.filename}:{where.lineno})")
    return Result(category, name, "pass")


def _error_results(info: OptimizerInfo, dtype: torch.dtype, device: str) -> list[Result]:
    if info.optim_error_inputs_func is None:
        return [Result("errors", "error inputs", "skip", "the OptimizerInfo has no error inputs")]
    results = []
    for error_input in info.optim_error_inputs_func(device, dtype):
        name = f"{error_input.optimizer_error_input.desc} -> {error_input.error_type.__name__}"
        results.append(_run_one("errors", name, lambda e=error_input: run_error_input(info, e, dtype, device)))
    return results


def summarize(results: Iterable[Result]) -> dict[str, str]:
    """One status per category: fail if any check failed, pass if any passed, else skip."""
    statuses: dict[str, set[str]] = {}
    for result in results:
        statuses.setdefault(result.category, set()).add(result.status)
    return {
        category: "fail" if "fail" in found else "pass" if "pass" in found else "skip"
        for category, found in statuses.items()
    }


__all__ = [
    "CATEGORIES",
    "ContractInfo",
    "ContractInput",
    "ErrorOptimizerInput",
    "OptimizerInfo",
    "OptimizerInput",
    "Result",
    "info_for",
    "make_problem",
    "registered_info",
    "registered_infos",
    "run_contract",
    "summarize",
]
