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

Uncertainty. With more budgets than the three parameters, the efficiency gets a 95% seed-bootstrap
interval: the seeds are resampled with replacement (the same draw at every budget, since a seed's runs
share its initial weights and batches), each budget's loss is re-averaged over the drawn seeds, the fit
redone and the efficiency read off again; the 2.5th and 97.5th percentiles of those efficiencies are the
interval (the baseline's budget and the target are held fixed). With three budgets or fewer the fit passes
through every point, so there is nothing left over to estimate noise from: the interval is refused
("exact interpolation: no uncertainty"), and a verdict should use the curve crossing instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

BETA_BOUNDS = (1e-3, 10.0)
_GRID_POINTS = 600
FIT_PARAMETERS = 3
BOOTSTRAP_RESAMPLES = 200
EXACT_INTERPOLATION = "exact interpolation: no uncertainty"
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


def _grid_rss(u: np.ndarray, y: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """RSS of the exact (a, b') fit at every β of ``betas`` at once: a line in z = u^−β, in closed form.

    The same least squares as :func:`_profile`, vectorised over the grid, so the seed bootstrap (hundreds of
    fits) stays cheap.
    """
    z = np.power(u[None, :], -betas[:, None])
    zc = z - z.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    sxx = np.einsum("ij,ij->i", zc, zc)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(sxx > 0, (zc @ yc) / sxx, 0.0)
    resid = yc[None, :] - slope[:, None] * zc  # summed as residuals, not as ȳ-centred totals: no cancellation
    return np.einsum("ij,ij->i", resid, resid)


def fit_power_law(x: Sequence[float], y: Sequence[float], beta_bounds: tuple[float, float] = BETA_BOUNDS) -> FitOutcome:
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
    rss = _grid_rss(u, ys, np.exp(grid))
    k = int(np.argmin(rss))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]

    # Golden-section search on log β inside the grid bracket around the best grid point.
    c, d = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)

    def rss_at(log_beta: float) -> float:
        return float(_grid_rss(u, ys, np.array([math.exp(log_beta)]))[0])

    fc, fd = rss_at(c), rss_at(d)
    for _ in range(200):
        if hi - lo < 1e-13:
            break
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - _GOLDEN * (hi - lo)
            fc = rss_at(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + _GOLDEN * (hi - lo)
            fd = rss_at(d)
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
    seed_losses: tuple[tuple[str, float, float], ...] = ()  # (seed, final loss, seconds) per completed seed


@dataclass(frozen=True)
class AxisEfficiency:
    """Result of the method on one axis (steps or seconds)."""

    outcome: FitOutcome
    baseline_budget: float | None  # N_base (or T_base)
    budget_to_target: float | None  # N* (or T*)
    efficiency: float | None  # N_base / N*
    extrapolated: bool  # N* lies outside the measured budgets
    reason: str | None
    interval: tuple[float, float] | None = None  # 95% seed-bootstrap interval of ``efficiency``
    interval_note: str = ""  # why there is no interval, or how it was made


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


def _efficiency_of(x: Sequence[float], y: Sequence[float], target: float, baseline_budget: float) -> float | None:
    outcome = fit_power_law(x, y)
    solved = outcome.fit.solve(target) if outcome.reason is None and outcome.fit is not None else None
    return baseline_budget / solved if solved else None


def _bootstrap(
    points: Sequence[BudgetPoint], axis: AxisEfficiency, target: float, use_seconds: bool, rng: np.random.Generator
) -> AxisEfficiency:
    """``axis`` with its seed-bootstrap interval, or the reason it has none (see the module docstring)."""
    if axis.efficiency is None or axis.baseline_budget is None:
        return axis
    if len(set(axis.outcome.x)) <= FIT_PARAMETERS:
        return replace(axis, interval_note=EXACT_INTERPOLATION)
    seeds = sorted({seed for p in points for seed, _, _ in p.seed_losses})
    if len(seeds) < 2:
        return replace(axis, interval_note="one seed: no seed bootstrap")
    draws = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        drawn = rng.choice(seeds, size=len(seeds), replace=True)
        x, y = [], []
        for p in points:
            per_seed = {seed: (loss, seconds) for seed, loss, seconds in p.seed_losses}
            picked = [per_seed[s] for s in drawn if s in per_seed]
            if picked:
                x.append(float(np.mean([sec for _, sec in picked])) if use_seconds else p.steps)
                y.append(float(np.mean([loss for loss, _ in picked])))
        draws.append(_efficiency_of(x, y, target, axis.baseline_budget))
    reached = [d for d in draws if d is not None]
    note = f"95% seed bootstrap, {BOOTSTRAP_RESAMPLES} resamples"
    if len(reached) < len(draws):
        note += f"; target not reached in {len(draws) - len(reached)} of them (counted as efficiency 0)"
    values = np.array([d if d is not None else 0.0 for d in draws])
    return replace(
        axis, interval=(float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))), interval_note=note
    )


def schedule_efficiency(
    points: Sequence[BudgetPoint], target: float, baseline_steps: float | None, baseline_seconds: float | None
) -> ScheduleEfficiency:
    """Fit the optimizer's budget points in steps and in seconds and read off where they reach ``target``."""
    finite = [p for p in points if math.isfinite(p.loss)]
    steps = _axis([p.steps for p in finite], [p.loss for p in finite], target, baseline_steps)
    time = _axis([p.seconds for p in finite], [p.loss for p in finite], target, baseline_seconds)
    rng = np.random.default_rng(0)  # the interval is part of the report: the same runs give the same interval
    steps = _bootstrap(finite, steps, target, False, rng)
    time = _bootstrap(finite, time, target, True, rng)
    return ScheduleEfficiency(target=target, steps=steps, time=time, points=tuple(points))
