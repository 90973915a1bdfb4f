"""The SOAP paper's efficiency method (Vyas et al. 2024, §5; paper_specs.md §1 "Efficiency metric").

An optimizer is run with its full schedule compressed to fractions of the budget N (e.g. 0.5, 0.625,
0.75, 0.875, 1.0 × N; the schedule is compressed, not truncated, so every run ends annealed). The
final losses L_i at budgets N_i are fitted with the power law

    L(N) = a + b · N^(−β),          a: asymptotic loss, b > 0, β > 0,

and the fit is inverted at the baseline's full-budget loss L_base (AdamW's, or Shampoo's):

    N* = (b / (L_base − a))^(1/β)     (defined when L_base > a),
    efficiency = N_base / N*          (> 1: fewer steps than the baseline; step saving = 1 − N*/N_base).

The same fit in wall-clock uses each run's measured training seconds T_i instead of N_i (time
excludes evaluation and logging), giving T* and efficiency T_base / T*; this is how measured
throughput enters, including the optimizer's per-step overhead.

Fitting. For fixed β the model is linear in (a, b), so the least-squares problem is solved exactly
by ``numpy.linalg.lstsq``; the residual sum of squares RSS(β) is then minimised over β alone: a
log-spaced grid over [β_min, β_max] finds the basin and a golden-section search on log β refines it.
Budgets are divided by the largest one before fitting (b is converted back), which keeps the design
matrix well conditioned for budgets of 10^3–10^5 steps or seconds. Three parameters need at least
three distinct budgets; with exactly three the fit interpolates. A fit whose β sits on the search
bound, or whose b ≤ 0 (loss not falling with budget), is reported rather than silently used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

BETA_BOUNDS = (1e-3, 10.0)
_GRID_POINTS = 600
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class PowerLawFit:
    """L(x) = a + b·x^(−β) fitted to ``n_points`` points; ``rss`` is the residual sum of squares."""

    a: float
    b: float
    beta: float
    rss: float
    n_points: int
    beta_at_bound: bool

    def predict(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.a + self.b * np.power(x, -self.beta)

    def solve(self, loss: float) -> float | None:
        """The budget x at which the fitted curve reaches ``loss``; None if the asymptote a is above it."""
        if self.b <= 0 or loss <= self.a:
            return None
        return float((self.b / (loss - self.a)) ** (1.0 / self.beta))


@dataclass(frozen=True)
class FitOutcome:
    fit: PowerLawFit | None
    reason: str | None  # why there is no usable fit; None when ``fit`` is usable
    x: tuple[float, ...]
    y: tuple[float, ...]


def _profile(u: np.ndarray, y: np.ndarray, beta: float) -> tuple[float, float, float]:
    """Exact (a, b') and RSS for fixed β on normalised budgets u."""
    design = np.column_stack([np.ones_like(u), np.power(u, -beta)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return float(coef[0]), float(coef[1]), float(resid @ resid)


def fit_power_law(
    x: Sequence[float], y: Sequence[float], beta_bounds: tuple[float, float] = BETA_BOUNDS
) -> FitOutcome:
    """Least-squares fit of y = a + b·x^(−β); points with non-finite values are left out first."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0)
    xs, ys = xs[keep], ys[keep]
    points = (tuple(float(v) for v in xs), tuple(float(v) for v in ys))
    distinct = len(np.unique(xs))
    if distinct < 3:
        return FitOutcome(None, f"cannot fit: need >= 3 distinct budgets with a finite loss, have {distinct}", *points)

    scale = float(xs.max())
    u = xs / scale
    log_lo, log_hi = math.log(beta_bounds[0]), math.log(beta_bounds[1])
    grid = np.linspace(log_lo, log_hi, _GRID_POINTS)
    rss = np.array([_profile(u, ys, math.exp(g))[2] for g in grid])
    k = int(np.argmin(rss))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]

    # Golden-section search on log β inside the grid bracket around the best grid point.
    c, d = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fc, fd = _profile(u, ys, math.exp(c))[2], _profile(u, ys, math.exp(d))[2]
    for _ in range(200):
        if hi - lo < 1e-13:
            break
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - _GOLDEN * (hi - lo)
            fc = _profile(u, ys, math.exp(c))[2]
        else:
            lo, c, fc = c, d, fd
            d = lo + _GOLDEN * (hi - lo)
            fd = _profile(u, ys, math.exp(d))[2]
    log_beta = c if fc <= fd else d
    if rss[k] < min(fc, fd):  # the refinement never does worse than the grid
        log_beta = grid[k]
    beta = math.exp(log_beta)
    a, b_scaled, best_rss = _profile(u, ys, beta)
    b = b_scaled * scale**beta  # undo the normalisation: b'·(x/s)^−β = (b'·s^β)·x^−β
    at_bound = k in (0, len(grid) - 1)
    fit = PowerLawFit(a=a, b=b, beta=beta, rss=best_rss, n_points=len(xs), beta_at_bound=at_bound)
    if b <= 0:
        return FitOutcome(fit, "cannot fit: loss does not fall with budget (b <= 0)", *points)
    return FitOutcome(fit, None, *points)


@dataclass(frozen=True)
class BudgetPoint:
    """One schedule length of a configuration family: mean final loss over its completed seeds."""

    steps: float
    seconds: float
    loss: float
    n_seeds: int
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class AxisEfficiency:
    """Result of the method on one axis (steps or seconds)."""

    outcome: FitOutcome
    baseline_budget: float | None  # N_base (or T_base)
    budget_to_target: float | None  # N* (or T*)
    efficiency: float | None  # N_base / N*
    extrapolated: bool  # N* lies outside the measured budgets
    reason: str | None


@dataclass(frozen=True)
class ScheduleEfficiency:
    target: float
    steps: AxisEfficiency
    time: AxisEfficiency
    points: tuple[BudgetPoint, ...] = field(default_factory=tuple)


def _axis(x: Sequence[float], y: Sequence[float], target: float, baseline_budget: float | None) -> AxisEfficiency:
    outcome = fit_power_law(x, y)
    if outcome.reason is not None or outcome.fit is None:
        return AxisEfficiency(outcome, baseline_budget, None, None, False, outcome.reason)
    solved = outcome.fit.solve(target)
    if solved is None:
        reason = f"not reached: fitted asymptote a = {outcome.fit.a:.4g} is at or above the target {target:.4g}"
        return AxisEfficiency(outcome, baseline_budget, None, None, False, reason)
    extrapolated = not (min(outcome.x) <= solved <= max(outcome.x))
    efficiency = baseline_budget / solved if baseline_budget else None
    reason = None if baseline_budget else "no baseline budget to compare with"
    return AxisEfficiency(outcome, baseline_budget, solved, efficiency, extrapolated, reason)


def schedule_efficiency(
    points: Sequence[BudgetPoint], target: float, baseline_steps: float | None, baseline_seconds: float | None
) -> ScheduleEfficiency:
    """Fit the optimizer's budget points in steps and in seconds and read off where they reach ``target``."""
    finite = [p for p in points if math.isfinite(p.loss)]
    steps = _axis([p.steps for p in finite], [p.loss for p in finite], target, baseline_steps)
    time = _axis([p.seconds for p in finite], [p.loss for p in finite], target, baseline_seconds)
    return ScheduleEfficiency(target=target, steps=steps, time=time, points=tuple(points))
