"""check-optimizer's own checks beside the generic contract: bf16 parameters, parameters without gradients,
and parity with a reference trajectory from ``../shared/golden`` where one applies.

Each check returns ``(status, detail)`` with status ``pass``, ``fail`` or ``skip``; a crash is a failure.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from soapbench.bench.memory import iter_state_tensors  # heavyball nests its state per group
from soapbench.golden import golden_dir, load_golden, run_trajectory

Factory = Callable[..., torch.optim.Optimizer]
STEPS = 6

# The golden run each algorithm is checked against (README of ../shared/golden, §3).
GOLDEN_RUNS = {
    "adamw": "adamw_f64", "adafactor": "adafactor_momentum_f64", "adafactor_torch": "adafactor_torch_f64",
    "muon": "muon_keller_f64", "muon_torch": "muon_torch_f64", "soap": "soap_f64,soap_f32", "soap_muon": "soapmuon_paper_f64",
    "kl_shampoo": "kl_shampoo_f64", "kl_soap": "kl_soap_f64",
    "torch.optim.AdamW": "adamw_f64", "torch.optim.Adafactor": "adafactor_torch_f64", "torch.optim.Muon": "muon_torch_f64",
}  # fmt: skip
FIRST_ORDER = ("adamw_f64", "adafactor_torch_f64", "adafactor_momentum_f64")
NEWTON_SCHULZ = ("muon_keller_f64", "muon_torch_f64")
# Entries whose two-sided factors start rank-deficient: their null-space eigenvectors are set by rounding noise, so
# they are a smoke test only (golden README §4).
FRAGILE = {"soap_f64": ("w1", "w2"), "soap_f32": ("w1", "w2"), "soapmuon_full_f64": ("w1", "w2"),
           "kl_shampoo_f64": ("w1", "w2"), "kl_soap_f64": ("w1", "w2")}  # fmt: skip
# Bounds on max |Δ| over the 31 recorded states (README §4): first-order methods agree to rounding; Newton–Schulz runs
# in bf16, so a different op grouping moves it by ~5e-4; second-order methods on well-posed entries within 10x the
# README's "clean" (float64 eigh/QR) differences; fragile entries by the smoke bound.
FIRST_ORDER_BOUND, NEWTON_SCHULZ_BOUND, WELL_POSED_BOUND, SMOKE_BOUND = 1e-10, 1e-3, 1e-4, 5e-2


def _quiet(factory: Factory, params: Any, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory(params, **kwargs)


def _matrices(dtype: torch.dtype, matrices_only: bool, seed: int = 0) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (4, 3, 3, 3)] + ([] if matrices_only else [(5,)])
    return [nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)) for shape in shapes]


def _step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
    optimizer.step()


def check_bf16(factory: Factory, kwargs: dict[str, Any], matrices_only: bool) -> tuple[str, str]:
    """bf16 parameters train for a few steps, stay finite and move; the detail names the state's dtypes."""
    params = _matrices(torch.bfloat16, matrices_only)
    before = [p.detach().clone() for p in params]
    optimizer = _quiet(factory, params, kwargs)
    for step in range(STEPS):
        _step(optimizer, params, step)
    if not all(torch.isfinite(p.float()).all() for p in params):
        return "fail", "non-finite bf16 parameters"
    if all(torch.equal(a, b) for a, b in zip(before, params)):
        return "fail", "no bf16 parameter moved"
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in iter_state_tensors(dict(optimizer.state))
                     if t.is_floating_point() and t.numel() > 1})  # fmt: skip
    return "pass", f"state in {', '.join(dtypes) or 'no tensors'}" + (
        " (bf16 state loses precision)" if "bfloat16" in dtypes else ""
    )


def check_gradless(factory: Factory, kwargs: dict[str, Any], matrices_only: bool) -> tuple[str, str]:
    """A parameter whose grad stays None is left untouched and gets no state; the others still move."""
    params = _matrices(torch.float32, matrices_only)
    unused = nn.Parameter(torch.randn(7, 7))
    saved, moving = unused.detach().clone(), params[0].detach().clone()
    optimizer = _quiet(factory, [*params, unused], kwargs)
    for step in range(STEPS):
        _step(optimizer, params, step)
    if not torch.equal(unused, saved):
        return "fail", "changed a parameter that had no gradient"
    if optimizer.state.get(unused):
        return "fail", f"kept state for a parameter without gradients ({', '.join(map(str, optimizer.state[unused]))})"
    if torch.equal(params[0], moving):
        return "fail", "did not move the parameters with gradients"
    return "pass", ""


def check_modes(factory: Factory, kwargs: dict[str, Any], matrices_only: bool) -> tuple[str, str]:
    """An optimizer with train/eval modes: eval() moves to its evaluation weights, train() back to the training
    weights (to rounding), and the trainer's evaluation (``evaluation_weights``) sees the evaluation weights."""
    from soapbench.optimizers.modes import evaluation_weights, has_modes, set_mode

    params = _matrices(torch.float32, matrices_only)
    optimizer = _quiet(factory, params, kwargs)
    if not has_modes(optimizer):
        return "skip", "no train()/eval() modes"
    set_mode(optimizer, "train")
    for step in range(STEPS):
        _step(optimizer, params, step)
    training = [p.detach().clone() for p in params]
    set_mode(optimizer, "eval")
    evaluation = [p.detach().clone() for p in params]
    set_mode(optimizer, "train")
    if not all(torch.allclose(p, t, rtol=1e-5, atol=1e-6) for p, t in zip(params, training)):
        worst = max((p - t).abs().max().item() for p, t in zip(params, training))
        return "fail", f"train() after eval() did not restore the training weights (max |Δ| {worst:.3g})"
    with evaluation_weights(nn.Module(), optimizer):
        seen = [p.detach().clone() for p in params]
    if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(seen, evaluation)):  # a lerp round trip
        return "fail", "the trainer's evaluation does not see the weights eval() sets"
    moved = max((e - t).abs().max().item() for e, t in zip(evaluation, training))
    return (
        "pass",
        f"evaluation weights differ from the training weights by up to {moved:.3g}; the trainer evaluates at them",
    )


def golden_run_for(keys: list[str]) -> str | None:
    """The golden run(s) for the first of ``keys`` (registered name, algorithm family, import path) that has one;
    several, comma-separated, are tried in order (an implementation that rejects float64 is checked in float32)."""
    for key in keys:
        if key and key in GOLDEN_RUNS:
            return GOLDEN_RUNS[key]
    return None


def _golden_kwargs(golden: dict, kwargs: dict[str, Any], accepted: list[str]) -> tuple[dict, list[str]]:
    """The target's kwargs overlaid with the golden run's hyperparameters that it takes by the same name, with the
    references' conventions spelled out (shampoo_beta -1 means β2), since another class may read -1 literally."""
    hyperparameters = dict(golden["hyperparameters"])
    if hyperparameters.get("shampoo_beta", 0) < 0 and "betas" in hyperparameters:
        hyperparameters["shampoo_beta"] = hyperparameters["betas"][1]
    merged, dropped = dict(kwargs), []
    for key, value in hyperparameters.items():
        if isinstance(value, str) and value.startswith("torch."):  # "torch.float64 (reference default ...)"
            value = value.split()[0].removeprefix("torch.")
        if key in accepted:
            merged[key] = value
        else:
            dropped.append(key)
    return merged, [f"not taken by this class: {', '.join(dropped)}"] if dropped else []


def check_golden_parity(runs: str, factory: Factory, kwargs: dict[str, Any], accepted: list[str]) -> tuple[str, str]:
    crashed = []
    for run in runs.split(","):
        if not (golden_dir() / f"{run}.pt").is_file():
            return "skip", f"no golden trajectories at {golden_dir()} (set SOAPBENCH_GOLDEN)"
        try:
            status, detail = _parity(run, factory, kwargs, accepted)
        except Exception as error:  # noqa: BLE001 - try the next golden run (another dtype)
            crashed.append(f"{run}: {type(error).__name__}: {error}")
            continue
        return status, "; ".join([detail, *(f"crashed on {c}" for c in crashed)])
    return "fail", "; ".join(f"crashed on {c}" for c in crashed)


def _parity(run: str, factory: Factory, kwargs: dict[str, Any], accepted: list[str]) -> tuple[str, str]:
    golden = load_golden(run)
    for key in ("param_dtype", "torch_default_dtype"):  # stored as "torch.float64"
        if isinstance(golden[key], str):
            golden[key] = getattr(torch, golden[key].removeprefix("torch."))
    merged, notes = _golden_kwargs(golden, kwargs, accepted)
    shapes = golden.get("optimizer_param_shapes") or {}
    ours = run_trajectory(
        lambda params: _quiet(factory, params, merged), golden["param_names"], golden["param_dtype"],
        param_shapes={k: tuple(v) for k, v in shapes.items()}, default_dtype=golden["torch_default_dtype"],
    )  # fmt: skip
    fragile = FRAGILE.get(run, ())
    bound = (
        FIRST_ORDER_BOUND if run in FIRST_ORDER else NEWTON_SCHULZ_BOUND if run in NEWTON_SCHULZ else WELL_POSED_BOUND
    )
    scale = 1.0
    if golden["param_dtype"] == torch.float32:  # README: soap_f32 compares relatively (max |Δ| / max |W|)
        scale = max(golden["traj"][name].abs().max().item() for name in golden["param_names"])
        bound = 2e-4
    worst, parts = [], []
    for name in golden["param_names"]:
        diff = (ours[name].double() - golden["traj"][name].double()).abs().max().item() / scale
        limit = SMOKE_BOUND if name in fragile else bound
        parts.append(f"{name} {diff:.1e}" + (" (smoke)" if name in fragile else ""))
        if not diff <= limit or not math.isfinite(diff):
            worst.append(f"{name} {diff:.1e} > {limit:.0e}")
    detail = (
        f"{run}: max |Δ|{' / max |W|' if scale != 1.0 else ''} " + ", ".join(parts) + "".join(f"; {n}" for n in notes)
    )
    return ("fail", f"{'; '.join(worst)} ({detail})") if worst else ("pass", detail)
