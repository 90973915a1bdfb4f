"""check-optimizer: the optimizer contract, golden parity and short real runs on any optimizer, as one table.

    python scripts/check_optimizer.py soap                      # a registered optimizer, at its yaml
    python scripts/check_optimizer.py heavyball_soap            # a peer yaml
    python scripts/check_optimizer.py mypkg.MyOpt --kwargs lr=1e-3 betas=[0.9,0.95]

Rows: the generic contract's categories (:mod:`soapbench.contract`: convergence with and without schedulers,
param groups, state_dict round trips, hooks, deepcopy, tensor lr, error inputs), bf16 parameters, parameters
without gradients, train/eval modes (Schedule-Free: evaluation at the eval weights), parity with the golden
reference trajectory where one applies, a short nanogpt_char_cpu run
beside AdamW, and a trainer run stopped halfway and resumed, which must end bit-identical to one never stopped.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass

from soapbench.errors import ConfigError
from soapbench.optimizer_check.probes import (
    GOLDEN_RUNS,
    check_bf16,
    check_golden_parity,
    check_gradless,
    check_modes,
    golden_run_for,
)
from soapbench.optimizer_check.target import Target, parse_kwargs, resolve_target
from soapbench.optimizer_check.training import check_resume, check_training

STATUSES = ("pass", "fail", "skip")


@dataclass(frozen=True)
class Row:
    check: str
    status: str
    detail: str
    seconds: float


def _accepted(target: Target) -> list[str]:
    try:
        parameters = inspect.signature(target.factory).parameters
    except (TypeError, ValueError):
        return []
    return [name for name in parameters if name not in ("self", "params")]


def _matrices_only(target: Target) -> bool:
    import torch

    try:
        target.factory([torch.nn.Parameter(torch.zeros(3))], **target.kwargs)
    except Exception:  # noqa: BLE001 - any refusal of a vector means it trains matrices only
        return True
    return False


def check_kwargs_accepted(target: Target, kwargs: dict) -> None:
    """--kwargs the optimizer's own constructor rejects (``lr=abc``, ``lr=-1``, ``betas=[0.9]``) are bad input, not a
    table of failed checks; only when it accepts its defaults, so a broken optimizer still shows as failed checks."""
    import torch

    if not kwargs:
        return
    defaults = {k: v for k, v in target.kwargs.items() if k not in kwargs}
    params = lambda: [torch.nn.Parameter(torch.zeros(4, 3))]  # noqa: E731 - a matrix: every optimizer takes one
    try:
        target.factory(params(), **defaults)
    except Exception:  # noqa: BLE001 - the optimizer itself is at fault: its checks fail and say why
        return
    try:
        target.factory(params(), **target.kwargs)
    except Exception as error:  # noqa: BLE001 - whatever the constructor raises names the rejected value
        given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ConfigError(
            f"--kwargs {given}: the optimizer rejects them ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no message'}); fix the values"
        ) from error


def check_golden_name(golden: str | None) -> None:
    """An explicit --golden must name golden runs that exist (a misspelt one would otherwise pass as a skip)."""
    from soapbench.golden import golden_dir

    if golden in (None, "auto", "none"):
        return
    known = {run for runs in GOLDEN_RUNS.values() for run in runs.split(",")}
    known |= {p.stem for p in golden_dir().glob("*.pt") if p.stem != "problem"} if golden_dir().is_dir() else set()
    unknown = [run for run in golden.split(",") if run not in known]
    if unknown:
        raise ConfigError(
            f"--golden {golden}: no golden run {unknown[0]!r}; choose from {', '.join(sorted(known))}, auto or none"
        )


def _timed(check: str, function: Callable[[], tuple[str, str]]) -> Row:
    started = time.perf_counter()
    try:
        status, detail = function()
    except Exception as error:  # noqa: BLE001 - a crash is a failed check, reported with its message
        status, detail = "fail", f"{type(error).__name__}: {error}"
    return Row(check, status, detail, time.perf_counter() - started)


def contract_rows(target: Target, matrices_only: bool) -> list[Row]:
    """One row per category of the generic contract (soapbench.contract), with its first failure."""
    from soapbench.contract import CATEGORIES, run_contract

    rows = []
    for category in CATEGORIES:
        started = time.perf_counter()
        results = run_contract(target.factory, target.kwargs, categories=[category], matrices_only=matrices_only)
        counts = {s: sum(r.status == s for r in results) for s in STATUSES}
        failed = [r for r in results if r.status == "fail"]
        status = "fail" if failed else "pass" if counts["pass"] else "skip"
        detail = f"{counts['pass']}/{len(results)} checks pass" + (
            f", {counts['skip']} skipped" if counts["skip"] else ""
        )
        if failed:
            detail += f"; first failure: {failed[0].name}: {failed[0].reason}"
        elif status == "skip" and results:
            detail = results[0].reason
        rows.append(Row(f"contract: {category}", status, detail, time.perf_counter() - started))
    return rows


def check_optimizer(
    name: str, kwargs: dict | None = None, *, steps: int = 100, contract: bool = True, training: bool = True,
    golden: str | None = None, progress: Callable[[str], None] = lambda _: None,
) -> tuple[Target, list[Row]]:  # fmt: skip
    """Resolve ``name`` (registered, yaml, or import path) and run every check on it; bad input raises ConfigError."""
    check_golden_name(golden)
    target = resolve_target(name, dict(kwargs or {}))
    check_kwargs_accepted(target, dict(kwargs or {}))
    matrices_only = _matrices_only(target)
    rows: list[Row] = []
    if contract:
        progress("contract ...")
        rows += contract_rows(target, matrices_only)
    progress("bf16, grad-less, parity ...")
    rows.append(_timed("bf16 parameters", lambda: check_bf16(target.factory, target.kwargs, matrices_only)))
    rows.append(
        _timed("parameters without gradients", lambda: check_gradless(target.factory, target.kwargs, matrices_only))
    )
    rows.append(_timed("train/eval modes", lambda: check_modes(target.factory, target.kwargs, matrices_only)))
    run = golden if golden not in (None, "auto") else golden_run_for([target.registered, target.family, name])
    if golden == "none" or run is None:
        rows.append(
            Row("golden parity", "skip", "no golden reference for this optimizer (--golden RUN picks one)", 0.0)
        )
    else:
        rows.append(
            _timed(
                f"golden parity ({run})",
                lambda: check_golden_parity(run, target.factory, target.kwargs, _accepted(target)),
            )
        )
    if training:
        progress(f"nanogpt_char_cpu, {steps} steps, and AdamW ...")
        rows.append(
            _timed(f"nanogpt_char_cpu {steps} steps vs AdamW", lambda: check_training(target.train_overrides, steps))
        )
        progress("trainer resume ...")
        rows.append(
            _timed("trainer resume (stop, resume = uninterrupted)", lambda: check_resume(target.train_overrides))
        )
    return target, rows


def render(target: Target, rows: list[Row]) -> str:
    lines = [f"check-optimizer: {target.description}", f"kwargs: {target.kwargs or 'class defaults'}",
             *(f"note: {note}" for note in target.notes), "",
             "| check | status | seconds | detail |", "|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {r.check} | {r.status.upper() if r.status == 'fail' else r.status} | {r.seconds:.1f} | {r.detail} |"
        for r in rows
    ]
    failed = [r.check for r in rows if r.status == "fail"]
    lines += [
        "",
        f"{len(failed)} of {len(rows)} checks failed: {', '.join(failed)}"
        if failed
        else f"all {len(rows)} checks pass or skip",
    ]
    return "\n".join(lines)


__all__ = ["Row", "check_optimizer", "parse_kwargs", "render"]
