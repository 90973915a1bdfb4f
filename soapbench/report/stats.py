"""Uncertainty over seeds: mean ± std with a 95% interval, and whether an arm really differs from the baseline.

* **Interval.** For n ≥ 2 finite seed values, the 95% confidence interval of the mean is
  mean ± t_{0.975, n−1}·s/√n (Student t, sample std s with ddof = 1). With n = 1 there is no interval:
  the report says "n = 1" instead of printing a std of nan.
* **Paired test.** Every arm of a reproduction starts seed k from the same initial weights and sees the
  same batches, so arm and baseline are compared seed by seed: ``scipy.stats.ttest_rel`` on the seeds
  both completed (two-sided), with the 95% and 90% intervals of the mean difference from its
  ``confidence_interval`` and a paired percentile bootstrap interval beside them (n ≥ 3).
* **Multiplicity.** The p-values of one report's comparisons are Holm-adjusted together
  (:func:`holm`); a verdict reads the adjusted p.
* **Verdict words.** ``better`` / ``worse``: adjusted p < α = 0.05. Otherwise ``equivalent`` when the
  90% paired interval lies inside ±margin (two one-sided tests at 5%, TOST), the margin stated with its
  reason in the reference file; else ``inconclusive``, with the minimum detectable effect at 80% power
  (paired t, noncentral-t power at the observed spread of the differences) and the seeds it would take
  to detect the observed gap. With fewer than 2 paired seeds there is no test: ``inconclusive``.
  When every difference is the same (a deterministic toy) the t-test is undefined; then any nonzero
  gap counts as significant, since there is no noise to hide it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000  # beyond this, "seeds needed" is reported as "more than"
VERDICTS = ("better", "worse", "equivalent", "inconclusive")


@dataclass(frozen=True)
class Estimate:
    """Mean of the finite values over seeds, with its sample std and 95% interval half-width."""

    n: int
    mean: float
    std: float  # nan for n < 2
    half_width: float  # nan for n < 2

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def estimate(values: Sequence[float]) -> Estimate:
    finite = np.array([v for v in values if math.isfinite(v)], dtype=float)
    n = int(finite.size)
    if n == 0:
        return Estimate(0, math.nan, math.nan, math.nan)
    mean = float(finite.mean())
    if n < 2:
        return Estimate(1, mean, math.nan, math.nan)
    std = float(finite.std(ddof=1))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n))
    return Estimate(n, mean, std, half)


@dataclass(frozen=True)
class PairedTest:
    """``this`` − ``baseline`` over the seeds both completed (negative: this arm is lower, i.e. better)."""

    seeds: tuple[str, ...]
    mean_diff: float
    sd_diff: float  # nan for n < 2
    p_value: float | None  # None for n < 2
    ci95: tuple[float, float] | None
    ci90: tuple[float, float] | None
    bootstrap95: tuple[float, float] | None  # paired percentile bootstrap, n ≥ 3

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_test(this: Mapping[str, float], baseline: Mapping[str, float]) -> PairedTest:
    """Paired t-test of ``this`` against ``baseline`` on the seeds present (and finite) in both."""
    seeds = tuple(
        sorted(
            (s for s in this if s in baseline and math.isfinite(this[s]) and math.isfinite(baseline[s])),
            key=_seed_order,
        )
    )
    a = np.array([this[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    if not seeds:
        return PairedTest(seeds, math.nan, math.nan, None, None, None, None)
    diff = a - b
    mean = float(diff.mean())
    if len(seeds) < 2:
        return PairedTest(seeds, mean, math.nan, None, None, None, None)
    sd = float(diff.std(ddof=1))
    # differences equal up to rounding (a deterministic toy) are equal: the t statistic would be noise over noise
    if np.ptp(diff) <= 1e-12 * np.abs(diff).max():
        sd = 0.0
    if sd == 0:
        return PairedTest(seeds, mean, 0.0, 0.0 if mean != 0 else 1.0, (mean, mean), (mean, mean), (mean, mean))
    result = stats.ttest_rel(a, b)
    ci95, ci90 = result.confidence_interval(0.95), result.confidence_interval(0.90)
    boot = None
    if len(seeds) >= 3:
        boot_ci = stats.bootstrap(
            (a, b),
            _mean_difference,
            paired=True,
            vectorized=True,
            method="percentile",
            n_resamples=9999,
            rng=np.random.default_rng(0),
        ).confidence_interval
        boot = (float(boot_ci.low), float(boot_ci.high))
    return PairedTest(
        seeds,
        mean,
        sd,
        float(result.pvalue),
        (float(ci95.low), float(ci95.high)),
        (float(ci90.low), float(ci90.high)),
        boot,
    )


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def _seed_order(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the given p-values (None = no test, not counted among the m).

    The k-th smallest of m p-values becomes max over j ≤ k of min(1, (m − j + 1)·p_(j)): the family-wise
    error rate stays ≤ α for any dependence between the tests. scipy ships only Benjamini–Hochberg
    (``false_discovery_control``), which bounds the false discovery rate instead.
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with n pairs to detect a true mean difference ``effect``."""
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = abs(effect) * math.sqrt(n) / sd
    # The wrong-sign tail is negligible wherever power matters, and scipy's nct.cdf returns nan for some large
    # shifts at df = 1 (two seeds): count it as 0 there rather than let a nan stop the root search.
    wrong_sign = float(np.nan_to_num(stats.nct.cdf(-critical, df, shift), nan=0.0))
    return float(stats.nct.sf(critical, df, shift)) + wrong_sign


def minimum_detectable_effect(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """Smallest true gap the paired t-test with n pairs detects with probability ``target``."""
    upper = sd
    while power(upper, sd, n, alpha) < target:
        upper *= 2
    return float(optimize.brentq(lambda e: power(e, sd, n, alpha) - target, 0.0, upper))


def seeds_needed(effect: float, sd: float, alpha: float = ALPHA, target: float = POWER) -> int | None:
    """Paired seeds for 80% power at a true gap ``effect``; None when more than ``MAX_SEEDS`` (or no gap)."""
    if effect == 0:
        return None
    return next((n for n in range(2, MAX_SEEDS + 1) if power(effect, sd, n, alpha) >= target), None)


@dataclass(frozen=True)
class Comparison:
    """One arm against the baseline arm: the paired test, its Holm-adjusted p and the verdict they give."""

    test: PairedTest
    p_adjusted: float | None
    verdict: str  # better | worse | equivalent | inconclusive
    reason: str
    margin: float | None = None

    @property
    def delta(self) -> float:
        return self.test.mean_diff

    @property
    def p_value(self) -> float | None:
        return self.test.p_value

    @property
    def significant(self) -> bool:
        return self.verdict in ("better", "worse")


def judge(test: PairedTest, p_adjusted: float | None, margin: float | None, decimals: int = 4) -> Comparison:
    """The verdict word from the adjusted p, the 90% interval and the margin (see the module docstring)."""
    d = decimals
    if test.p_value is None or p_adjusted is None:
        return Comparison(test, p_adjusted, "inconclusive", f"n = {test.n} paired seed(s): no test", margin)
    if p_adjusted < ALPHA:
        return Comparison(
            test,
            p_adjusted,
            "better" if test.mean_diff < 0 else "worse",
            f"Holm-adjusted p = {p_adjusted:.2g} < {ALPHA}",
            margin,
        )
    low, high = test.ci90 or (math.nan, math.nan)
    if margin is not None and -margin < low and high < margin:
        return Comparison(
            test,
            p_adjusted,
            "equivalent",
            f"90% interval [{low:+.{d}f}, {high:+.{d}f}] inside ±{margin:g} (TOST at 5%)",
            margin,
        )
    if test.sd_diff == 0:
        return Comparison(test, p_adjusted, "inconclusive", "no gap and no spread", margin)
    mde = minimum_detectable_effect(test.sd_diff, test.n)
    needed = seeds_needed(test.mean_diff, test.sd_diff)
    why = (
        f"90% interval [{low:+.{d}f}, {high:+.{d}f}] not inside ±{margin:g}; "
        if margin is not None
        else "no equivalence margin stated; "
    )
    why += f"with {test.n} seeds only gaps ≥ {mde:.{d}f} are detected at 80% power; the observed gap needs " + (
        f"{needed} seeds" if needed else f"more than {MAX_SEEDS} seeds"
    )
    return Comparison(test, p_adjusted, "inconclusive", why, margin)


def judge_all(tests: Sequence[PairedTest], margin: float | None, decimals: int = 4) -> list[Comparison]:
    """Holm over the family ``tests``, then a verdict for each."""
    adjusted = holm([t.p_value for t in tests])
    return [judge(t, p, margin, decimals) for t, p in zip(tests, adjusted)]


def decimals_for(values: Sequence[float | None]) -> int:
    """Decimals that keep four significant digits of the typical value: 1.7302 → 4, an MSE of 0.004123 → 6.

    At least 4, so losses of order 1 print as they always have; one count per report keeps its columns aligned.
    """
    finite = sorted(abs(v) for v in values if v is not None and math.isfinite(v) and v != 0)
    if not finite:
        return 4
    typical = finite[len(finite) // 2]
    return max(4, 3 - math.floor(math.log10(typical)))
