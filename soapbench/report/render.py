"""Turn an :class:`~soapbench.report.analysis.Analysis` into report.md, report.csv, configurations.csv, sources.json,
and the rows every verdict is made of: per_seed.csv, comparisons.csv and claims.csv (report.md prints the same rows).

Formatting only: every number here was computed in analysis/efficiency/reference. Nothing is dropped:
runs that are not in any mean (diverged, failed, running, no summary, unreadable) are counted per
optimizer and listed one by one with the reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from soapbench.report.analysis import (
    Analysis,
    ConfigResult,
    OptimizerResult,
    WorkloadResult,
    comparisons,
    fairness_warnings,
    machine_shared,
    seconds_per_step,
    timing_outliers,
)
from soapbench.report.efficiency import AxisEfficiency
from soapbench.report.figures import SavedFigure
from soapbench.report.reference import Reference, check_claims, compare, paper_final_for
from soapbench.report.stats import decimals_for
from soapbench.report.store import STATUSES, Run, status_counts


def _num(value: float | None, fmt: str = "{:.4f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], decimals: int | None = None) -> str:
    """Floats with ``decimals`` fixed decimals (a report's losses), else 4 significant digits."""
    float_format = "{:.4g}" if decimals is None else f"{{:.{decimals}f}}"

    def cell(value: Any) -> str:
        text = "–" if value is None else (float_format.format(value) if isinstance(value, float) else str(value))
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def hyperparameter_text(config: ConfigResult | None) -> str:
    if config is None:
        return "–"
    params = dict(config.hyperparameters)
    if not params and config.value("optimizer.lr") is not None:
        return f"lr={config.value('optimizer.lr')} (single configuration)"
    return ", ".join(f"{k.removeprefix('optimizer.')}={v}" for k, v in params.items()) or "(single configuration)"


def _rounded(value: float | None, digits: int = 4) -> float | None:
    """The CSVs carry the report's precision, and no nan where a number does not exist (n = 1)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def final_text(config: ConfigResult | None, decimals: int = 4) -> str:
    """``1.7296 ± 0.0040 [1.7197, 1.7395] (n=3)``: mean ± std and 95% interval over seeds; n = 1 said as such."""
    if config is None:
        return "no runs"
    if config.diverged:
        return f"diverged ({config.diverged}/{config.diverged + config.n} seeds)"
    if config.n == 0:
        return "no completed seed"
    est, d = config.estimate, decimals
    if est.n < 2:
        return f"{est.mean:.{d}f} (n = 1: no spread)"
    return f"{est.mean:.{d}f} ± {est.std:.{d}f} [{est.low:.{d}f}, {est.high:.{d}f}] (n={est.n})"


def comparison_rows(workload: WorkloadResult, reference: Reference | None) -> list[dict[str, Any]]:
    """One row per arm tested against the baseline: what comparisons.csv holds and the report's verdicts print.

    ``mean_diff`` = arm − baseline over paired seeds (lower is better), its 95% interval, the paired t-test's p,
    the Holm-adjusted p over this workload's comparisons, the equivalence margin and the verdict.
    """
    margin = reference.margin.value if reference is not None and reference.margin is not None else None
    rows = []
    for label, c in comparisons(workload, margin).items():
        arm = workload.optimizers[label]
        rows.append(
            {
                "arm": label,
                "baseline": workload.baseline,
                "n_pairs": c.test.n,
                "mean_diff": _rounded(c.delta, 10),
                "ci_low": _rounded(c.test.ci95[0], 10) if c.test.ci95 else None,
                "ci_high": _rounded(c.test.ci95[1], 10) if c.test.ci95 else None,
                "p_value": c.p_value,
                "p_adjusted": c.p_adjusted,
                "margin": margin,
                "verdict": c.verdict,
                "reason": c.reason,
                "ci90_low": _rounded(c.test.ci90[0], 10) if c.test.ci90 else None,
                "ci90_high": _rounded(c.test.ci90[1], 10) if c.test.ci90 else None,
                "bootstrap_low": _rounded(c.test.bootstrap95[0], 10) if c.test.bootstrap95 else None,
                "bootstrap_high": _rounded(c.test.bootstrap95[1], 10) if c.test.bootstrap95 else None,
                "confounds": "; ".join(k for k, _, _ in arm.treatment_confounds)
                + ("; " if arm.treatment_confounds and any(f for *_, f in arm.differences) else "")
                + "; ".join(k for k, _, _, f in arm.differences if f),
                "tuning_flags": "; ".join(workload.tuning_flags(arm)),
                "workload": workload.workload,
            }
        )
    return rows


def _flagged(text: str, flags: Sequence[str]) -> str:
    return text + "".join(f"; ⚠ {flag}" for flag in flags)


def verdict_text(arm: OptimizerResult, workload: WorkloadResult, row: dict[str, Any] | None) -> str:
    """The arm's verdict against the baseline, with what qualifies it beside it: confounds and tuning flags."""
    flags = workload.tuning_flags(arm)
    if arm.arm == workload.baseline:
        return _flagged("baseline", flags)
    if row is None:
        return _flagged("–" if arm.best is None or not arm.best.diverged else "diverged", flags)
    d = workload.decimals
    text = f"Δ {row['mean_diff']:+.{d}f}"
    if row["ci_low"] is not None:
        text += f" [{row['ci_low']:+.{d}f}, {row['ci_high']:+.{d}f}]"
    if row["p_adjusted"] is not None:
        text += f", p={row['p_value']:.2g}, Holm p={row['p_adjusted']:.2g}"
    text += f" (n={row['n_pairs']} pairs): **{row['verdict']}**"
    if row["verdict"] == "inconclusive":
        text += f" ({row['reason']})"
    if row["confounds"]:
        text += f"; ⚠ confounded: {row['confounds']}"
    return _flagged(text, flags)


def tuned_text(arm: OptimizerResult) -> str:
    """The tuned value(s) of the best configuration and the grid tried, e.g. ``lr=0.003 of {0.001, 0.003, 0.01}``."""
    best = arm.best
    if best is None:
        return "–"
    if not arm.swept:
        lr = best.value("optimizer.lr")
        return f"lr={lr:g} (not tuned)" if isinstance(lr, (int, float)) else "(single configuration)"
    parts = []
    for key in arm.swept:
        tried = sorted({_short(c.value(key)) for c in arm.configs})
        # A search tries a new value per trial: the count, not the list (trials.csv and configurations.csv have them).
        grid = f"{{{', '.join(tried)}}}" if len(tried) <= 6 else f"{len(tried)} values tried"
        parts.append(f"{key.removeprefix('optimizer.')}={_short(best.value(key))} of {grid}")
    return "; ".join(parts)


def _short(value: Any) -> str:
    """4 significant digits for floats (a search's sampled values carry 16), tuples element by element."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return repr(value)


def counts_text(counts: dict[str, int]) -> str:
    names = {"completed": "completed", "no_summary": "no summary"}
    parts = [f"{n} {names.get(s, s)}" for s, n in counts.items() if n]
    return ", ".join(parts) or "none"


def _to_target(value: float | None, has_target: bool, has_curve: bool, fmt: str, unreliable: bool = False) -> str:
    if not has_target:
        return "n/a (no target)"
    if value is None:
        return "not reached" if has_curve else "no completed seed"
    return fmt.format(value) + (" (unreliable: machine shared)" if unreliable else "")


def _eff(value: float | None, bound: float | None, has_target: bool, has_curve: bool = True) -> str:
    if not has_target:
        return "n/a"
    if not has_curve:
        return "–"
    if value is not None:
        return f"{value:.2f}×"
    return f"not reached (<{bound:.2f}×)" if bound is not None else "not reached"


def _fit_eff(axis: AxisEfficiency | None) -> str:
    if axis is None:
        return "no shortened runs"
    if axis.efficiency is None:
        return axis.reason or "–"
    text = f"{axis.efficiency:.2f}×"
    text += f" [{axis.interval[0]:.2f}, {axis.interval[1]:.2f}]" if axis.interval else f" ({axis.interval_note})"
    return text + (" (extrapolated)" if axis.extrapolated else "")


def _share(arm: OptimizerResult) -> str:
    runs = arm.best.completed if arm.best else []
    shares = [
        r.summary["optimizer_seconds"] / r.summary["train_seconds"]
        for r in runs
        if (r.summary or {}).get("train_seconds") and (r.summary or {}).get("optimizer_seconds") is not None
    ]
    return f"{100 * sum(shares) / len(shares):.1f}%" if shares else "–"


def _state_memory(arm: OptimizerResult) -> str:
    values = [
        r.summary["optimizer_state_bytes"]
        for r in (arm.best.completed if arm.best else [])
        if (r.summary or {}).get("optimizer_state_bytes") is not None
    ]
    return f"{max(values) / 2**20:.2f} MiB" if values else "–"


def wallclock_caveat(opt) -> str | None:
    """Why the best configuration's wall-clock is unreliable (a shared machine, or a seed's run > 30% slower per
    step than its arm's median), or None: report.csv carries it, and the leaderboard marks time scores from it."""
    best = opt.best
    if best is None:
        return None
    slow = set(timing_outliers(opt)) & {r.name for r in best.completed}
    outliers = (
        f"timing outlier(s) in {len(slow)} of the best configuration's {len(best.completed)} runs "
        "(> 30% slower per step than the arm's median)"
        if slow
        else None
    )
    return "; ".join(reason for reason in (machine_shared(best.completed), outliers) if reason) or None


def optimizer_rows(workload: WorkloadResult, reference: Reference | None) -> list[dict[str, Any]]:
    """One row per arm (every variant, each with its own tuned hyperparameters)."""
    has_target = workload.target is not None
    has_fit = any(opt.schedule is not None for opt in workload.optimizers.values())
    verdicts = {row["arm"]: row for row in comparison_rows(workload, reference)}
    rows = []
    for opt in workload.optimizers.values():
        curve = opt.best is not None and opt.best.curve is not None
        shared = opt.best is not None and machine_shared(opt.best.completed) is not None
        slow = opt.best is not None and bool(set(timing_outliers(opt)) & {r.name for r in opt.best.completed})
        final_set = opt.best.final_set if opt.best else ""
        row = {
            "arm": opt.arm,
            "tuned (best of grid)": tuned_text(opt),
            "final: mean ± std [95% CI] (n)": final_text(opt.best, workload.decimals)
            + (" †" if final_set == "fixed validation set" else ""),
            f"vs {workload.baseline}": verdict_text(opt, workload, verdicts.get(opt.arm)),
            "steps to target*": _to_target(opt.steps_to_target, has_target, curve, "{:.0f}"),
            "time to target* [s]": _to_target(opt.seconds_to_target, has_target, curve, "{:.1f}", shared)
            + (" (timing outlier in its seeds)" if slow and opt.seconds_to_target is not None else ""),
            "eff. steps": _eff(opt.efficiency_steps, opt.efficiency_steps_bound, has_target, curve),
            "eff. time": _eff(opt.efficiency_time, opt.efficiency_time_bound, has_target, curve)
            + (" (unreliable)" if shared and opt.efficiency_time is not None else ""),
            "optimizer time share": _share(opt),
            "state memory": _state_memory(opt),
            "runs": counts_text(opt.counts),
        }
        if has_fit:  # the SOAP-paper schedule method only where shortened runs exist
            row["fit eff. steps"] = _fit_eff(opt.schedule.steps if opt.schedule else None)
            row["fit eff. time"] = _fit_eff(opt.schedule.time if opt.schedule else None)
        if reference is not None:
            row["paper"] = paper_final_for(reference, workload, opt.arm) or "–"
        rows.append(row)
    return rows


def differences_rows(workload: WorkloadResult) -> list[dict[str, Any]]:
    """Per arm, every setting of its best configuration that differs from the baseline arm's."""
    rows = []
    for opt in workload.optimizers.values():
        if opt.arm == workload.baseline or opt.best is None:
            continue
        optimizer_keys = [
            f"{k.removeprefix('optimizer.')}={v}" for k, v, _, confound in opt.differences if not confound
        ]
        confounds = [f"{k}: {v} (baseline {b})" for k, v, b, confound in opt.differences if confound]
        confounds += [f"{k}: {_plain(v)} (baseline {_plain(b)})" for k, v, b in opt.treatment_confounds]
        rows.append(
            {
                "arm": opt.arm,
                "optimizer settings (what is compared)": ", ".join(optimizer_keys) or "–",
                "other differences (confounds)": "**" + "; ".join(confounds) + "**" if confounds else "none",
            }
        )
    return rows


def _trained_by(arm: OptimizerResult) -> str:
    """'muon 0.21M (26%); companion_adamw 0.59M (74%)' from the runs' summaries (recorded since the trainer counts them)."""
    counts = next(
        (
            (r.summary or {}).get("params_by_optimizer")
            for r in (arm.best.completed if arm.best else [])
            if (r.summary or {}).get("params_by_optimizer")
        ),
        None,
    )
    if not counts:
        return "not recorded (runs older than the per-optimizer count)"
    total = sum(counts.values()) or 1
    ordered = sorted(counts.items(), key=lambda kv: kv[0].startswith("companion"))  # the main optimizer first
    return "; ".join(f"{name} {n / 1e6:.3g}M ({n / total:.0%})" for name, n in ordered)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else _short(value)


def treatment_rows(workload: WorkloadResult) -> list[dict[str, Any]]:
    """Per arm: who trains which parameters, and with what, for the parameters no arm compares."""
    keys = list(dict.fromkeys(k for o in workload.optimizers.values() for k in o.treatment))
    return [
        {"arm": o.arm, "parameters per optimizer": _trained_by(o), **{k: _plain(o.treatment.get(k, "–")) for k in keys}}
        for o in workload.optimizers.values()
        if o.best is not None
    ]


def efficiency_rows(workload: WorkloadResult) -> list[dict[str, Any]]:
    rows = []
    for opt in workload.optimizers.values():
        if opt.schedule is None:
            continue
        budgets = ", ".join(
            f"{p.steps:.0f}"
            + (f" ({p.steps / workload.full_budget:.3g})" if workload.full_budget else "")
            + ("" if math.isfinite(p.loss) else " diverged")
            for p in opt.schedule.points
        )
        for axis_name, axis in (("steps", opt.schedule.steps), ("time", opt.schedule.time)):
            fit = axis.outcome.fit if axis.outcome.reason is None else None
            notes = [axis.reason] if axis.reason else []
            if fit is not None and fit.beta_at_bound:
                notes.append("β at search bound")
            if axis.extrapolated:
                notes.append("extrapolated beyond the measured budgets")
            rows.append(
                {
                    "optimizer": opt.optimizer,
                    "axis": axis_name,
                    "budgets N (fraction)": budgets,
                    "a": _num(fit.a if fit else None),
                    "b": _num(fit.b if fit else None, "{:.4g}"),
                    "β": _num(fit.beta if fit else None, "{:.4g}"),
                    "RSS": _num(fit.rss if fit else None, "{:.2e}"),
                    "budget to target": _num(axis.budget_to_target, "{:.1f}"),
                    "baseline budget": _num(axis.baseline_budget, "{:.1f}"),
                    "efficiency": _num(axis.efficiency, "{:.3f}×"),
                    "95% interval": (
                        f"[{axis.interval[0]:.3f}, {axis.interval[1]:.3f}]"
                        if axis.interval
                        else axis.interval_note or "–"
                    ),
                    "notes": "; ".join(notes) or "–",
                }
            )
    return rows


def excluded_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        if run.status == "completed":
            continue
        summary = run.summary or {}
        reason = summary.get("error") or "; ".join(run.problems) or ""
        if run.status == "diverged" and summary.get("diverged_step") is not None:
            reason = f"diverged at step {summary['diverged_step']}" + (f"; {reason}" if reason else "")
        if run.status == "running":
            reason = "summary says running (live or killed)" + (f"; {reason}" if reason else "")
        steps = summary.get("steps")
        rows.append(
            {
                "run": run.name,
                "optimizer": run.optimizer,
                "status": run.status,
                "steps": f"{steps}/{summary.get('max_steps', run.max_steps)}" if steps is not None else "–",
                "reason": reason or "–",
            }
        )
    return rows


def configuration_rows(workload: WorkloadResult) -> list[dict[str, Any]]:
    rows = []
    for opt in workload.optimizers.values():
        for config in sorted(opt.configs + opt.shortened, key=lambda c: (-(c.max_steps or 0), c.score)):
            rows.append(
                {
                    "workload": workload.workload,
                    "arm": opt.arm,
                    "optimizer": opt.optimizer,
                    "max_steps": config.max_steps,
                    "hyperparameters": hyperparameter_text(config),
                    "best": config is opt.best,
                    "role": config.role,
                    "final_mean": _rounded(config.mean, workload.decimals),
                    "final_std": _rounded(config.std, workload.decimals),
                    "final_ci95_low": _rounded(config.estimate.low, workload.decimals),
                    "final_ci95_high": _rounded(config.estimate.high, workload.decimals),
                    "final_set": config.final_set,
                    "n": config.n,
                    "train_seconds_mean": config.seconds,
                    **{f"runs_{s}": config.counts.get(s, 0) for s in STATUSES},
                    "runs": ";".join(r.name for r in config.runs),
                }
            )
    return rows


def csv_rows(analysis: Analysis, reference: Reference | None) -> list[dict[str, Any]]:
    rows = []
    for w in analysis.workloads:
        verdicts = {row["arm"]: row for row in comparison_rows(w, reference)}
        for opt in w.optimizers.values():
            best = opt.best
            sched = opt.schedule
            fit_s = sched.steps.outcome.fit if sched and sched.steps.outcome.reason is None else None
            comparison = verdicts.get(opt.arm)
            rows.append(
                {
                    "workload": w.workload,
                    "arm": opt.arm,
                    "optimizer": opt.optimizer,
                    "metric": analysis.metric,
                    "best_hyperparameters": hyperparameter_text(best),
                    "final_mean": _rounded(best.mean, w.decimals) if best else None,
                    "final_std": _rounded(best.std, w.decimals) if best else None,
                    "final_ci95_low": _rounded(best.estimate.low, w.decimals) if best else None,
                    "final_ci95_high": _rounded(best.estimate.high, w.decimals) if best else None,
                    "final_set": best.final_set if best else None,
                    "n_seeds": best.n if best else 0,
                    "delta_vs_baseline": _rounded(comparison["mean_diff"], w.decimals) if comparison else None,
                    "p_value_vs_baseline": comparison["p_value"] if comparison else None,
                    "p_adjusted_vs_baseline": comparison["p_adjusted"] if comparison else None,
                    "verdict_vs_baseline": comparison["verdict"]
                    if comparison
                    else ("baseline" if opt.arm == w.baseline else None),
                    "tuning_flags": "; ".join(w.tuning_flags(opt)),
                    "wallclock_unreliable": wallclock_caveat(opt),
                    "best_diverged_seeds": best.diverged if best else 0,
                    "target": w.target,
                    "target_source": w.target_source,
                    "steps_to_target": opt.steps_to_target,
                    "seconds_to_target": opt.seconds_to_target,
                    "efficiency_steps": opt.efficiency_steps,
                    "efficiency_time": opt.efficiency_time,
                    "efficiency_steps_upper_bound": opt.efficiency_steps_bound,
                    "efficiency_time_upper_bound": opt.efficiency_time_bound,
                    "fit_a": fit_s.a if fit_s else None,
                    "fit_b": fit_s.b if fit_s else None,
                    "fit_beta": fit_s.beta if fit_s else None,
                    "fit_efficiency_steps": sched.steps.efficiency if sched else None,
                    "fit_efficiency_steps_ci95_low": sched.steps.interval[0]
                    if sched and sched.steps.interval
                    else None,
                    "fit_efficiency_steps_ci95_high": sched.steps.interval[1]
                    if sched and sched.steps.interval
                    else None,
                    "fit_efficiency_time": sched.time.efficiency if sched else None,
                    "fit_note_steps": (sched.steps.reason or sched.steps.interval_note)
                    if sched
                    else "no shortened-schedule runs",
                    "fit_note_time": sched.time.reason if sched else "no shortened-schedule runs",
                    **{f"runs_{s}": opt.counts.get(s, 0) for s in STATUSES},
                    "paper_final": paper_final_for(reference, w, opt.arm) if reference else None,
                }
            )
    return rows


def _relpath(source: str) -> str:
    try:
        rel = os.path.relpath(source)
    except ValueError:  # different drive, or a W&B URL
        return source
    return rel if not rel.startswith("..") else source


def sources_json(analysis: Analysis, command: str, figures: Sequence[SavedFigure]) -> dict[str, Any]:
    in_means = {
        r.source
        for w in analysis.workloads
        for o in w.optimizers.values()
        for c in o.configs + o.shortened
        for r in c.completed
    }
    return {
        "experiments": sorted({r.experiment for r in analysis.runs}),
        "command": command,
        "metric": analysis.metric,
        "baseline": analysis.baseline,
        "targets": {w.workload: {"target": w.target, "source": w.target_source} for w in analysis.workloads},
        "status_counts": status_counts(analysis.runs),
        "figures": {f.path.name: list(map(_relpath, f.sources)) for f in figures},
        "runs": [
            {
                "run_dir": _relpath(r.source),
                "experiment": r.experiment,
                "optimizer": r.optimizer,
                "seed": r.seed,
                "status": r.status,
                "config_hash": r.config_hash,
                "config_sha256": r.config_sha256,
                "git_commit": (r.summary or {}).get("git_commit"),
                "in_means": r.source in in_means,
            }
            for r in analysis.runs
        ],
    }


def _provenance(analysis: Analysis) -> list[str]:
    def unique(key: str) -> str:
        values = sorted({str((r.summary or {}).get(key)) for r in analysis.runs if (r.summary or {}).get(key)})
        return ", ".join(values) or "unknown"

    return [f"- git commits of the runs: {unique('git_commit')}", f"- devices: {unique('device')}"]


def table_notes(w: WorkloadResult, reference: Reference | None = None) -> list[str]:
    """What the main table's columns mean, with the numbers that qualify them (eval spacing, the final set)."""
    spacing = f"every {w.eval_interval} steps" if w.eval_interval else "at each run's evaluation steps"
    sets = {o.best.final_set for o in w.optimizers.values() if o.best is not None and o.best.n}
    notes = [
        "Each arm is one optimizer setting (e.g. precondition frequency) with its own tuned hyperparameters; "
        "'final' is the best configuration's mean over seeds with its sample std and 95% t-interval.",
        f"'vs {w.baseline}': Δ = arm − baseline in final loss over the seeds both ran (paired: same initial weights "
        "and batches per seed) with its 95% interval; paired t-test (`scipy.stats.ttest_rel`, two-sided), p-values "
        f"Holm-adjusted across the {len(comparisons(w, None))} comparison(s) with the baseline in this table; "
        "**better**/**worse** = Holm p < 0.05; **equivalent** = not significant and the 90% interval inside "
        "±margin (TOST at 5%); **inconclusive** = neither, with the smallest gap these seeds detect at 80% power. "
        + _margin_note(reference)
        + " Every number is in per_seed.csv and comparisons.csv.",
        f"*Steps and time to target are interpolated linearly between evaluations ({spacing}) on the mean curve "
        "over seeds of the fixed evaluation set; efficiency = the baseline's steps (seconds) to target / the arm's "
        "(>1 is better).",
    ]
    if "fixed validation set" in sets:
        notes.append("† final on the fixed evaluation set (these runs did not measure the whole validation split).")
    if "whole validation split" in sets:
        notes.append(
            "Final losses are on the whole validation split; the target uses the fixed evaluation set "
            "of the curves, so that crossings and target are on the same data."
        )
    notes.append(
        "'optimizer time share' = optimizer.step() seconds / training seconds; 'state memory' = the "
        "optimizer's state tensors at the end of training, the companion's included; 'runs' counts every "
        "run of the arm."
    )
    return notes


def _margin_note(reference: Reference | None) -> str:
    if reference is None or reference.margin is None:
        return "No equivalence margin is stated (no reference file with one), so no gap is called equivalent."
    return f"Margin ±{reference.margin.value:g} ({reference.margin.reason})."


_COMPARE_COLUMNS = [
    "setting",
    "optimizer",
    "quantity",
    "paper",
    "ours",
    "ours_how",
    "check",
    "our scale vs paper's",
    "source",
]
_CONFIG_COLUMNS = ["arm", "max_steps", "hyperparameters", "best", "final_mean", "final_std", "n", "runs"]


def main_table(w: WorkloadResult, reference: Reference | None) -> str:
    """Heading, target, the per-arm table and its warnings: what is also printed to stdout."""
    target = f"{w.target:.{w.decimals}f}" if w.target is not None else "none"
    rows = optimizer_rows(w, reference)
    lines = [
        f"## {w.workload}",
        "",
        f"Target: **{target}** ({w.target_source}); full budget: {w.full_budget} steps.",
        "",
        md_table(rows, list(rows[0]) if rows else ["arm"]),
    ]
    warnings = fairness_warnings(w)
    if warnings:
        lines += [""] + [f"- **warning:** {note}" for note in warnings]
    return "\n".join(lines)


def _seed_list(seeds: Sequence[Any] | None) -> str:
    return ", ".join(map(str, seeds or [])) or "none"


def tuning_lines(record: dict[str, Any]) -> list[str]:
    """What reproduce.py's tuning did, arm by arm: the grid on the tuning seeds, its extensions, whether the best
    is bracketed, borrowed lrs, the report seeds."""
    protocol = record.get("protocol", {})
    out = [
        f"Protocol: each arm's lr on a log grid of {protocol.get('points')} points a factor "
        f"{protocol.get('factor')} apart around {protocol.get('grid_centre', 'its yaml lr')}, scored by the mean over tuning seed(s) "
        f"{_seed_list(protocol.get('tune_seeds'))}; {protocol.get('edge_extension')} while the best is on an edge; "
        f"then the best lr on {protocol.get('seeds')} report seed(s) {_seed_list(protocol.get('report_seeds'))}. "
        "Reported means and paired tests use the report seeds only."
        + (
            f" Weight decay: {protocol['decay_per_step']:g} per step at the peak lr in every run of every arm "
            f"(weight_decay = {protocol['decay_per_step']:g} / lr)."
            if protocol.get("decay_per_step") is not None
            else ""
        ),
        "",
    ]
    d = decimals_for([v for arm in record.get("arms", {}).values() for v in arm.get("results", {}).values()])
    for name, arm in record.get("arms", {}).items():
        seeds, best = _seed_list(arm.get("seeds")), arm.get("best_lr")
        if arm.get("tuning") == "borrowed" or arm.get("tuned_from"):
            lr = f" {best:g}" if best is not None else " (not chosen yet)"
            out.append(
                f"- `{name}`: **not tuned (borrowed)**: takes `{arm.get('tuned_from')}`'s tuned lr{lr}; "
                f"report seeds {seeds}."
            )
            continue
        tried = ", ".join(
            f"{float(lr):g} → " + ("failed" if v is None else "diverged" if v == float("inf") else f"{v:.{d}f}")
            for lr, v in sorted(arm.get("results", {}).items(), key=lambda kv: float(kv[0]))
        )
        line = (
            f"- `{name}`: grid centre {arm.get('yaml_lr'):g}; tuning seed(s) {_seed_list(arm.get('tune_seeds'))}: "
            f"{tried or 'nothing ran yet'}."
        )
        extensions = int(arm.get("extensions") or 0)
        if extensions:
            line += f" The best was on an edge: the grid was extended {extensions} time(s)" + (
                f", the last {arm['extended']}." if arm.get("extended") else "."
            )
        if arm.get("still_on_edge"):
            line += (
                f" **Still on an edge after {extensions} extension(s) (the cap): the optimum may lie outside "
                "the grid.**"
            )
        line += (
            f" Best lr {best:g}; report seeds {seeds}."
            if best is not None
            else " No usable lr (all diverged or failed)."
        )
        out.append(line)
    return out


def verdict_lines(reference: Reference | None, w: WorkloadResult) -> list[str]:
    """The paper's claims this run can test, one line each: what it says, the verdict and why, our numbers."""
    if reference is None:
        return []
    return [
        f"- [{row['setting']}] {row['claim']}: **not tested**: {row['reason']}"
        if row["verdict"] == "not tested"
        else f"- [{row['setting']}] {row['claim']}: **{row['verdict']}** ({row['reason']}; {row['ours']})"
        for row in check_claims(reference, w)
    ]


def measured_rows(reference: Reference, w: WorkloadResult) -> list[dict[str, Any]]:
    """Claims outside their regime: what we measured, as effect sizes with intervals, not as a verdict."""
    return [
        {
            "claim": f"[{row['setting']}] {row['claim']}",
            "why not tested": row["reason"],
            "measured (arm − arm, 95% interval, Holm p, n)": row["measured"] or "–",
        }
        for row in check_claims(reference, w)
        if row["verdict"] == "not tested"
    ]


def reference_section(reference: Reference, w: WorkloadResult, metric: str) -> list[str]:
    differs = "" if reference.metric == metric else f" (**differs from ours, `{metric}`**)"
    out = [
        f"### Paper reference: {reference.paper}",
        "",
        f"File `{reference.path.name}`; paper metric `{reference.metric}`{differs}.",
        "",
    ]
    out += [f"- setting `{k}`: {v}" for k, v in reference.settings.items()] + [""]
    claims = verdict_lines(reference, w)
    if claims:
        out += [
            "Paper claims, checked against our seeds where the run meets the claim's regime (verdicts: holds, "
            "does not hold, inconclusive, not tested):",
            "",
            *claims,
            "",
        ]
    measured = measured_rows(reference, w)
    if measured:
        out += [
            "#### Measured at our scale (effect sizes, not verdicts on the paper)",
            "",
            md_table(measured, list(measured[0])),
            "",
        ]
    comparisons = compare(reference, w)
    if comparisons:
        out += [md_table(comparisons, _COMPARE_COLUMNS), ""]
    if reference.legend:
        out += [f"Source tags: {reference.legend}", ""]
    return out


def markdown(
    analysis: Analysis, command: str, generated: str, reference: Reference | None, figures: Sequence[SavedFigure]
) -> tuple[str, str]:
    """(full report.md text, the main table(s) alone for stdout)."""
    experiments = ", ".join(sorted({r.experiment for r in analysis.runs}))
    out = [
        f"# Optimizer comparison: {experiments}",
        "",
        f"Generated {generated} by `{command}`.",
        "",
        f"- metric: `{analysis.metric}` (final = last eval of a completed run)",
        f"- baseline: `{analysis.baseline}`",
        f"- runs: {len(analysis.runs)} ({counts_text(status_counts(analysis.runs))})",
        *_provenance(analysis),
        "",
    ]
    tables = []
    for w in analysis.workloads:
        tables.append(main_table(w, reference) + ("\n\n" + "\n".join(verdict_lines(reference, w)) if reference else ""))
        out += [main_table(w, reference), "", *[f"- {n}" for n in table_notes(w, reference)], ""]
        if w.experiment in analysis.tuning:
            out += ["### Tuning", "", *tuning_lines(analysis.tuning[w.experiment]), ""]
        differences = differences_rows(w)
        if differences:
            out += ["### What differs from the baseline arm", "", md_table(differences, list(differences[0])), ""]
        treated = treatment_rows(w)
        if treated:
            out += [
                "### Who trains which parameters",
                "",
                "Read from each arm's config.yaml (the companion takes the main optimizer's lr and weight decay "
                "unless set); a difference between arms here is a confound, flagged beside the verdict.",
                "",
                md_table(treated, list(treated[0])),
                "",
            ]
        efficiency = efficiency_rows(w)
        if efficiency:
            out += [
                "### Schedule-fit efficiency (L(N) = a + b·N^−β over shortened schedules)",
                "",
                md_table(efficiency, list(efficiency[0])),
                "",
            ]
        if reference is not None:
            out += reference_section(reference, w, analysis.metric)
        configs = configuration_rows(w)
        roles = ["role"] if any(row["role"] for row in configs) else []  # only a tuning log says tune/report
        out += [
            "### All configurations",
            "",
            md_table(configs, _CONFIG_COLUMNS[:4] + roles + _CONFIG_COLUMNS[4:], w.decimals),
            "",
        ]
    excluded = excluded_rows(analysis.runs)
    out += [
        "## Runs not in any mean",
        "",
        md_table(excluded, list(excluded[0])) if excluded else "None: every run completed.",
        "",
        "## Figures",
        "",
    ]
    if figures:
        out += [f"- `{f.path.name}`: {f.caption} Sources: `{f.path.stem}.sources.json`." for f in figures]
    else:
        out += ["None drawn (`--no-figures`, or nothing to plot)."]
    if len(analysis.workloads) == 1:
        out += [
            "- No performance profile: it is the fraction of workloads an arm solves within a factor τ of the "
            "fastest, which over a single workload says nothing the table does not."
        ]
    out += ["", "Every run directory used is listed with its status and config hash in `sources.json`."]
    return "\n".join(out) + "\n", "\n\n".join(tables) + "\n"


def per_seed_rows(w: WorkloadResult) -> list[dict[str, Any]]:
    """One row per full-budget run with a final value: its role as the tuning log (tuning.json) records it; without
    a log, ``report`` when it is one of the seeds averaged into its arm's reported mean, else ``tune``."""
    rows = []
    for opt in w.optimizers.values():
        slow = timing_outliers(opt)
        for config in opt.configs:
            finals = config.seed_values()
            for run in config.runs:
                if run.status == "diverged":
                    final = math.inf
                elif run in config.completed:
                    final = finals[str(run.seed)]
                else:
                    continue
                rows.append(
                    {
                        "arm": opt.arm,
                        "seed": run.seed,
                        "role": config.role or ("report" if config is opt.best and run in config.completed else "tune"),
                        "hyperparameters": hyperparameter_text(config),
                        "final": final,
                        "seconds_per_step": seconds_per_step(run),
                        "timing_outlier": run.name in slow,
                        "run": run.name,
                        "workload": w.workload,
                    }
                )
    return rows


PER_SEED_COLUMNS = [
    "arm",
    "seed",
    "role",
    "hyperparameters",
    "final",
    "seconds_per_step",
    "timing_outlier",
    "run",
    "workload",
]
COMPARISON_COLUMNS = [
    "arm",
    "baseline",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "margin",
    "verdict",
    "reason",
    "ci90_low",
    "ci90_high",
    "bootstrap_low",
    "bootstrap_high",
    "confounds",
    "tuning_flags",
    "workload",
]
CLAIM_COLUMNS = ["claim", "verdict", "reason", "measured", "setting", "workload"]


def write_tables(out_dir: Path, analysis: Analysis, reference: Reference | None) -> None:
    pd.DataFrame(csv_rows(analysis, reference)).to_csv(out_dir / "report.csv", index=False)
    rows = [row for w in analysis.workloads for row in configuration_rows(w)]
    pd.DataFrame(rows).to_csv(out_dir / "configurations.csv", index=False)
    # Every verdict recomputable: the per-seed finals, the paired comparisons and the claims, as report.md has them.
    seeds = [row for w in analysis.workloads for row in per_seed_rows(w)]
    pd.DataFrame(seeds, columns=PER_SEED_COLUMNS).to_csv(out_dir / "per_seed.csv", index=False)
    compared = [row for w in analysis.workloads for row in comparison_rows(w, reference)]
    pd.DataFrame(compared, columns=COMPARISON_COLUMNS).to_csv(out_dir / "comparisons.csv", index=False)
    claims = [
        {**row, "workload": w.workload}
        for w in analysis.workloads
        for row in (check_claims(reference, w) if reference is not None else [])
    ]
    pd.DataFrame(claims, columns=CLAIM_COLUMNS).to_csv(out_dir / "claims.csv", index=False)
