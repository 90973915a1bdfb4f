"""AlgoPerf-style performance profiles (Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms").

For each workload w and optimizer o let t_{w,o} be the time (or steps) the optimizer's best
configuration needs to reach the workload's target (+inf if it does not reach it or has no runs).
The performance ratio is r_{w,o} = t_{w,o} / min_o' t_{w,o'} (≥ 1; the fastest optimizer has 1),
and the profile is the fraction of workloads on which o is within a factor τ of the fastest:

    ρ_o(τ) = |{w : r_{w,o} ≤ τ}| / |W|.

ρ_o(1) is the fraction of workloads o wins; ρ_o(τ) for large τ is the fraction it solves at all. A
workload on which no optimizer reaches its target gives every optimizer r = +inf there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from soapbench.report.analysis import Analysis


def times_to_target(analysis: Analysis, axis: str = "time") -> pd.DataFrame:
    """Workloads × optimizers table of t_{w,o} (seconds if axis == "time", else steps); inf = not reached."""
    if axis not in ("time", "steps"):
        raise ValueError(f"axis must be 'time' or 'steps', got {axis!r}")
    names = sorted({name for w in analysis.workloads for name in w.optimizers})
    rows = {}
    for w in analysis.workloads:
        row = {}
        for name in names:
            opt = w.optimizers.get(name)
            value = None
            if opt is not None:
                value = opt.seconds_to_target if axis == "time" else opt.steps_to_target
            row[name] = math.inf if value is None else float(value)
        rows[w.workload] = row
    return pd.DataFrame.from_dict(rows, orient="index", columns=names)


def performance_ratios(times: pd.DataFrame) -> pd.DataFrame:
    """r_{w,o} = t_{w,o} / min_o t_{w,o}; rows where nobody reaches the target are all inf."""
    best = times.min(axis=1)
    ratios = times.div(best.where(np.isfinite(best) & (best > 0)), axis=0)
    return ratios.fillna(math.inf)


def performance_profile(ratios: pd.DataFrame, taus: Iterable[float]) -> pd.DataFrame:
    """ρ_o(τ) for each τ (rows) and optimizer (columns)."""
    taus = np.asarray(list(taus), dtype=float)
    n_workloads = max(len(ratios), 1)
    data = {name: [(ratios[name] <= tau).sum() / n_workloads for tau in taus] for name in ratios.columns}
    return pd.DataFrame(data, index=pd.Index(taus, name="tau"))


def default_taus(ratios: pd.DataFrame, points: int = 200) -> np.ndarray:
    """Log-spaced τ from 1 to a little past the largest finite ratio (at least 2)."""
    finite = ratios.to_numpy(float)
    finite = finite[np.isfinite(finite)]
    top = max(2.0, float(finite.max()) * 1.1) if finite.size else 2.0
    return np.geomspace(1.0, top, points)
