"""Validation curves: one run's eval curve, its final value, the mean over seeds, and target crossing.

* A run's curve is its eval records (step, cumulative ``train_seconds``, metric), one per step.
* Its final value (for means) is the last eval of a completed run; a diverged run counts as +inf.
* The mean curve of a configuration averages the seeds at the eval steps they all have; its time axis
  is the mean ``train_seconds`` at those steps, and min/max/std give the band over seeds.
* Crossing: the first eval i with L_i ≤ L* (within a 1e-12 relative slack, so the baseline reaches a
  target computed from its own numbers), linearly interpolated from the previous eval:
  s* = s_{i−1} + (s_i − s_{i−1})·(L_{i−1} − L*)/(L_{i−1} − L_i); seconds use the same fraction.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from soapbench.report.store import Run

# Relative slack when comparing a loss with the target, so the baseline's mean curve reaches the
# target computed from the very same numbers despite summation-order rounding.
_TARGET_RTOL = 1e-12


def run_curve(run: Run, metric: str) -> pd.DataFrame:
    """Eval curve of one run: columns step, seconds, value, sorted by step (last record per step wins)."""
    columns = ["step", "seconds", "value"]
    frame = run.metrics
    points = pd.DataFrame(columns=columns, dtype=float)
    if not frame.empty and metric in frame.columns:
        evals = frame[frame["event"] == "eval"] if "event" in frame.columns else frame
        evals = evals[evals[metric].notna() | evals[metric].isna() & (run.status == "diverged")]
        seconds = evals["train_seconds"] if "train_seconds" in evals.columns else np.nan
        points = pd.DataFrame({"step": evals["step"], "seconds": seconds, "value": evals[metric]}, columns=columns)
        points = points.dropna(subset=["step"]).drop_duplicates("step", keep="last").sort_values("step")
    summary = run.summary or {}
    final, steps = summary.get("final_val_loss"), summary.get("steps")
    # A completed run's summary final loss is a measurement at the end of training; add it when the curve
    # stops earlier. (A diverged run's summary keeps its last finite eval, which is not a final value.)
    if run.status == "completed" and metric == "val/loss" and final is not None and steps is not None:
        if points.empty or float(steps) > float(points["step"].iloc[-1]):
            extra = pd.DataFrame(
                {"step": [float(steps)], "seconds": [summary.get("train_seconds", np.nan)], "value": [float(final)]}
            )
            points = pd.concat([points, extra], ignore_index=True) if not points.empty else extra
    return points.reset_index(drop=True).astype(float)


def run_final(run: Run, metric: str) -> float | None:
    """Final loss used for means: last eval of a completed run, +inf for a diverged one, else None."""
    if run.status == "diverged":
        return math.inf
    if run.status != "completed":
        return None
    curve = run_curve(run, metric)
    if curve.empty:
        return None
    value = float(curve["value"].iloc[-1])
    return value if math.isfinite(value) else math.inf


def whole_split_metric(metric: str) -> str:
    """``val/loss`` -> ``val_full/loss``: the same metric measured on the whole validation split."""
    return "val_full/" + metric.split("/", 1)[-1]


def run_full_final(run: Run, metric: str) -> float | None:
    """A completed run's final ``metric`` on the whole validation split (the trainer's last evaluation), if measured."""
    if run.status != "completed":
        return None
    key = whole_split_metric(metric)
    frame = run.metrics
    if not frame.empty and key in frame.columns:
        values = frame[key].dropna()
        if not values.empty:
            return float(values.iloc[-1])
    value = ((run.summary or {}).get("final_full_val_metrics") or {}).get(key)
    return float(value) if value is not None else None


def run_seconds(run: Run) -> float:
    """Training seconds at the end of a run (summary, else last metrics record)."""
    value = (run.summary or {}).get("train_seconds")
    if value is None and not run.metrics.empty and "train_seconds" in run.metrics.columns:
        value = run.metrics["train_seconds"].max()
    return float(value) if value is not None else math.nan


def crossing(curve: pd.DataFrame, target: float, value: str = "value") -> tuple[float, float] | None:
    """(step, seconds) where the curve first reaches ``target``, linearly interpolated; None if never."""
    if curve is None or curve.empty:
        return None
    steps, seconds, values = (curve[c].to_numpy(float) for c in ("step", "seconds", value))
    threshold = target + _TARGET_RTOL * abs(target)
    hits = np.nonzero(values <= threshold)[0]
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0 or not math.isfinite(values[i - 1]):
        return float(steps[i]), float(seconds[i])
    frac = (values[i - 1] - target) / (values[i - 1] - values[i])
    frac = min(max(frac, 0.0), 1.0)
    return (
        float(steps[i - 1] + frac * (steps[i] - steps[i - 1])),
        float(seconds[i - 1] + frac * (seconds[i] - seconds[i - 1])),
    )


def mean_curve(curves: list[pd.DataFrame]) -> pd.DataFrame | None:
    """Mean/min/max/std over seeds at the eval steps common to all curves; time is the mean seconds."""
    curves = [c for c in curves if not c.empty]
    if not curves:
        return None
    common = set(curves[0]["step"])
    for c in curves[1:]:
        common &= set(c["step"])
    if not common:
        return None
    steps = sorted(common)
    values = np.stack([c.set_index("step").loc[steps, "value"].to_numpy(float) for c in curves])
    seconds = np.stack([c.set_index("step").loc[steps, "seconds"].to_numpy(float) for c in curves])
    std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.full(len(steps), np.nan)
    return pd.DataFrame(
        {
            "step": steps,
            "seconds": seconds.mean(axis=0),
            "mean": values.mean(axis=0),
            "min": values.min(axis=0),
            "max": values.max(axis=0),
            "std": std,
            "n": len(curves),
        }
    )
