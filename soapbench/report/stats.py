"""Uncertainty over seeds: mean ± std with a 95% interval, and whether two arms really differ.

* **Interval.** For n ≥ 2 finite seed values, the 95% confidence interval of the mean is
  mean ± t_{0.975, n−1}·s/√n (Student t, sample std s with ddof = 1). With n = 1 there is no interval:
  the report says "n = 1" instead of printing a std of nan.
* **Verdict.** An arm's mean final loss against the baseline arm's: Welch's unequal-variance t-test
  (``scipy.stats.ttest_ind(equal_var=False)``), two-sided, at α = 0.05. "better" / "worse" only when
  the gap is significant, else "tie". With fewer than 2 seeds on either side there is no test: "n/a".
  When both sides have zero spread (identical seeds, e.g. a deterministic toy) the test is undefined;
  then any nonzero gap counts as significant, since there is no noise to hide it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05


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
class Comparison:
    """``this`` minus ``baseline`` in mean final loss (negative: this arm is lower, i.e. better)."""

    delta: float
    p_value: float | None
    verdict: str  # better | worse | tie | n/a
    reason: str = ""

    @property
    def significant(self) -> bool:
        return self.verdict in ("better", "worse")


def welch(this: Sequence[float], baseline: Sequence[float]) -> Comparison:
    a = np.array([v for v in this if math.isfinite(v)], dtype=float)
    b = np.array([v for v in baseline if math.isfinite(v)], dtype=float)
    if a.size == 0 or b.size == 0:
        return Comparison(math.nan, None, "n/a", "no completed seed")
    delta = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Comparison(delta, None, "n/a", f"n = {a.size} vs {b.size}: no test with one seed")
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        p = 0.0 if delta != 0 else 1.0
    else:
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    if p < ALPHA:
        return Comparison(delta, p, "better" if delta < 0 else "worse")
    return Comparison(delta, p, "tie")


def difference_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """95% Welch interval of mean(a) − mean(b); None with fewer than 2 seeds on a side."""
    x = np.array([v for v in a if math.isfinite(v)], dtype=float)
    y = np.array([v for v in b if math.isfinite(v)], dtype=float)
    if x.size < 2 or y.size < 2:
        return None
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    delta = float(x.mean() - y.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return delta, delta
    dof = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = float(stats.t.ppf(1 - ALPHA / 2, dof) * se)
    return delta - half, delta + half


def decimals_for(values: Sequence[float | None]) -> int:
    """Decimals that keep four significant digits of the typical value: 1.7302 → 4, an MSE of 0.004123 → 6.

    At least 4, so losses of order 1 print as they always have; one count per report keeps its columns aligned.
    """
    finite = sorted(abs(v) for v in values if v is not None and math.isfinite(v) and v != 0)
    if not finite:
        return 4
    typical = finite[len(finite) // 2]
    return max(4, 3 - math.floor(math.log10(typical)))
