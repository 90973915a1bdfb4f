"""Report figures (matplotlib, Agg backend), each saved as PNG with a ``<name>.sources.json`` sidecar.

Figures per workload (file names get a ``_<workload>`` suffix when a report covers several):

* ``loss_curves``: validation loss vs optimizer steps and vs training wall-clock for each optimizer's
  best configuration: mean over seeds with a min–max band (as in the SOAP-Muon report's Figure 1);
  the wall-clock axis is the mean cumulative ``train_seconds`` at each eval. Dashed line: the target.
* ``lr_sensitivity``: final loss vs learning rate (log x). For each lr the best configuration with that
  lr is shown (other swept hyperparameters tuned), averaged over the seeds every lr of the arm ran, so
  every point of a line has the same n (said in the legend); × at the top = every configuration at that
  lr diverged.
* ``frequency_ablation``: final loss and training seconds vs ``precondition_frequency`` (log x), best
  configuration per frequency, the baseline's best as a horizontal line (SOAP paper Fig. 1 right/Fig. 7).
* ``efficiency_fit``: final loss vs budget fraction with the fitted L(N) = a + b·N^−β and the target
  (SOAP paper Fig. 2), in steps and in seconds.
* ``efficiency``: bars of efficiency vs the baseline in steps and in time (curve crossing and, where it
  exists, the schedule fit with its seed-bootstrap interval); where there is no ratio, no bar, only a
  note with the arm's final-loss verdict.

Every figure colours an arm by one map (:func:`arm_colors`), and every wall-clock panel marks the arms whose
times come from a shared machine or include a timing outlier.
* ``images``: for colorization runs with ``images/step_*.png``, the latest image of the best
  configuration's first completed seed, side by side across optimizers.

Across workloads: ``performance_profile`` (see :mod:`soapbench.report.profiles`).
The sidecar lists every run directory whose data is drawn, the experiment and the caption.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from soapbench.report.analysis import (  # noqa: E402
    Analysis,
    ConfigResult,
    OptimizerResult,
    WorkloadResult,
    comparisons,
    machine_shared,
    timing_outliers,
)
from soapbench.report.profiles import (  # noqa: E402
    default_taus,
    performance_profile,
    performance_ratios,
    times_to_target,
)
from soapbench.report.store import Run  # noqa: E402

_IMAGE_RE = re.compile(r"step_(\d+)\.png$")


@dataclass(frozen=True)
class SavedFigure:
    path: Path
    caption: str
    sources: tuple[str, ...]


def _save(fig: plt.Figure, out_dir: Path, name: str, caption: str, experiment: str, runs: Iterable[Run]) -> SavedFigure:
    sources = tuple(sorted({r.source for r in runs}))
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    sidecar = {"figure": path.name, "experiment": experiment, "caption": caption, "runs": list(sources)}
    (out_dir / f"{name}.sources.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return SavedFigure(path, caption, sources)


def _title(workload: WorkloadResult, what: str, width: int = 100) -> str:
    model_data = workload.workload.split(":", 1)[-1]
    return textwrap.fill(f"{workload.experiment} ({model_data}): {what}", width)


def arm_colors(workload: WorkloadResult) -> dict[str, tuple]:
    """The one arm → colour map every figure of a workload uses, so a colour means the same arm everywhere."""
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(workload.optimizers)}


def _unreliable(arm: OptimizerResult) -> str:
    """' (time unreliable)' when the arm's wall-clock comes from a shared machine or has a timing outlier."""
    if arm.best is None:
        return ""
    slow = set(timing_outliers(arm)) & {r.name for r in arm.best.completed}
    return " (time unreliable)" if machine_shared(arm.best.completed) or slow else ""


def _label(arm: str, config: ConfigResult) -> str:
    params = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in config.hyperparameters.items())
    return f"{arm}" + (f" ({params})" if params else "") + f", n={config.n}"


def _x_scale(ax: plt.Axes, values: Iterable[float]) -> None:
    """A log axis only where there are at least three distinct positive values to spread out."""
    distinct = {v for v in values if v is not None and v > 0}
    if len(distinct) >= 3:
        ax.set_xscale("log")
    if 0 < len(distinct) <= 6:
        # values a half-decade apart sit close on a log axis: slanted labels do not run into each other
        ax.set_xticks(sorted(distinct), [f"{v:g}" for v in sorted(distinct)], rotation=30, ha="right", fontsize=8)
        ax.minorticks_off()


def _band_note(configs: Iterable[ConfigResult]) -> str:
    ns = sorted({c.n for c in configs})
    if ns == [1]:
        return "n = 1 seed per arm: no band"
    return "mean over seeds, min–max band" + (" (arms with n = 1 have none)" if 1 in ns else "")


def loss_curves(workload: WorkloadResult, metric: str, out_dir: Path, name: str) -> SavedFigure | None:
    bests = {n: o.best for n, o in workload.optimizers.items() if o.best is not None and o.best.curve is not None}
    if not bests:
        return None
    colors = arm_colors(workload)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    lows, highs = [], []
    for opt_name, config in bests.items():
        curve = config.curve
        for ax, x in zip(axes, ("step", "seconds")):
            mark = _unreliable(workload.optimizers[opt_name]) if x == "seconds" else ""
            ax.plot(
                curve[x],
                curve["mean"],
                color=colors[opt_name],
                label=_label(opt_name, config) + mark,
                ls=":" if mark else "-",
            )
            if config.n > 1:
                ax.fill_between(curve[x], curve["min"], curve["max"], color=colors[opt_name], alpha=0.2, lw=0)
        values = curve["mean"].to_numpy(float)
        values = values[np.isfinite(values)]
        if values.size:
            lows.append(values.min())
            # skip the first tenth of the curve so the initial loss does not flatten the interesting part
            highs.append(values[len(values) // 10 :].max())
    # An MSE falling from 0.2 to 0.004 on a linear axis is a cliff and a flat line: a log axis shows the tail.
    log_y = bool(lows) and min(lows) > 0 and max(highs) / min(lows) > 10
    for ax, xlabel in zip(axes, ("optimizer steps", "training wall-clock [s]")):
        if workload.target is not None:
            ax.axhline(
                workload.target, color="k", ls="--", lw=1, label=f"target {workload.target:.{workload.decimals}f}"
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        if log_y:
            ax.set_yscale("log")
            ax.set_ylim(min(lows) / 1.1, max(highs) * 1.1)
        elif lows:
            pad = 0.05 * max(max(highs) - min(lows), 1e-12)
            ax.set_ylim(min(lows) - pad, max(highs) + pad)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if any(_unreliable(workload.optimizers[n]) for n in bests):
        axes[1].legend(fontsize=7)
        axes[1].set_title("dotted: wall-clock unreliable (machine shared or timing outlier)", fontsize=8)
    band = _band_note(bests.values())
    fig.suptitle(_title(workload, f"{metric} of each arm's best configuration ({band})"))
    caption = (
        f"{workload.experiment}: {metric} (fixed evaluation set) vs steps and vs training seconds, best "
        f"configuration per arm, {band}; dashed: target"
        + ("; log y-axis (the curves span more than a decade)." if log_y else ".")
    )
    runs = [r for c in bests.values() for r in c.completed]
    return _save(fig, out_dir, name, caption, workload.experiment, runs)


def _errorbar(ax: plt.Axes, xs: Sequence[float], configs: Sequence[ConfigResult], color, label: str) -> None:
    """Mean with ± std bars where n > 1; seeds of an n = 1 point are said in the label, never drawn as ± nan."""
    ax.errorbar(
        xs,
        [c.mean for c in configs],
        yerr=[c.std if c.n > 1 else 0.0 for c in configs],
        marker="o",
        capsize=3 if any(c.n > 1 for c in configs) else 0,
        color=color,
        label=label,
    )


def _mark_missing(ax: plt.Axes, xs_diverged, xs_missing, color, name: str) -> None:
    top = blended_transform_factory(ax.transData, ax.transAxes)
    if xs_diverged:
        ax.scatter(
            xs_diverged,
            [0.97] * len(xs_diverged),
            marker="x",
            s=60,
            color=color,
            transform=top,
            label=f"{name}: diverged",
        )
    if xs_missing:
        ax.scatter(
            xs_missing,
            [0.97] * len(xs_missing),
            marker="o",
            s=40,
            facecolors="none",
            edgecolors=color,
            transform=top,
            label=f"{name}: no completed seed",
        )


def _common_seed_means(configs: Sequence[ConfigResult]) -> tuple[dict[int, float], int]:
    """Each configuration's mean over the seeds every one of them completed, and that count (0: none shared).

    A tuning grid runs each lr on one seed and the winner on more: plotting the winner's 3-seed mean beside
    its neighbours' single seeds mixes n and can make the chosen lr look worse than the one it beat.
    """
    usable = [c for c in configs if math.isfinite(c.score)]
    if not usable:
        return {}, 0
    common = set.intersection(*(set(c.seed_values()) for c in usable))
    if not common:
        return {}, 0
    return {id(c): float(np.mean([c.seed_values()[s] for s in common])) for c in usable}, len(common)


def lr_sensitivity(workload: WorkloadResult, metric: str, out_dir: Path, name: str) -> SavedFigure | None:
    """Final loss vs lr, per arm (only the lr changes along a line: the arm's other settings are fixed)."""
    key = "optimizer.lr"
    # the lr search's runs only: with a tuning log the report seeds at the best lr would be a point of another n
    arms = {n: o for n, o in workload.optimizers.items() if len({c.value(key) for c in o.tuned_configs()} - {None}) > 1}
    if not arms:
        return None
    colors = arm_colors(workload)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    runs: list[Run] = []
    all_x: list[float] = []
    for arm_name, arm in arms.items():
        by_lr = {float(c.value(key)): c for c in arm.tuned_configs() if isinstance(c.value(key), (int, float))}
        ok = sorted((x, c) for x, c in by_lr.items() if math.isfinite(c.score))
        shared, n = _common_seed_means([c for _, c in ok])
        if n:
            ax.plot(
                [x for x, _ in ok],
                [shared[id(c)] for _, c in ok],
                marker="o",
                color=colors[arm_name],
                label=f"{arm_name}, n={n} per point (the seeds every lr ran)",
            )
        else:  # no seed shared by every lr: each point its own mean, its n written beside it
            _errorbar(ax, [x for x, _ in ok], [c for _, c in ok], colors[arm_name], f"{arm_name} (n varies)")
            for x, c in ok:
                ax.annotate(f"n={c.n}", (x, c.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
        _mark_missing(
            ax,
            [x for x, c in by_lr.items() if not math.isfinite(c.score) and c.diverged],
            [x for x, c in by_lr.items() if not math.isfinite(c.score) and not c.diverged],
            colors[arm_name],
            arm_name,
        )
        all_x += list(by_lr)
        runs += [r for c in arm.tuned_configs() for r in c.runs]
    _x_scale(ax, all_x)
    ax.set_xlabel("lr")
    ax.set_ylabel(f"final {metric}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.suptitle(_title(workload, "final loss vs lr per arm (the same seeds at every point of a line)", 70))
    caption = (
        f"{workload.experiment}: final {metric} vs lr, one line per arm (nothing else changes along a "
        "line), each point the mean over the seeds every lr of the arm ran, so all points of a line have "
        "the same n (said in the legend); × at the top = diverged, ○ = no completed seed."
    )
    return _save(fig, out_dir, name, caption, workload.experiment, runs)


def frequency_ablation(workload: WorkloadResult, metric: str, out_dir: Path, name: str) -> SavedFigure | None:
    """Final loss and training time vs precondition frequency: one line per optimizer through its arms."""
    key = "optimizer.precondition_frequency"
    by_optimizer: dict[str, list] = {}
    for arm in workload.optimizers.values():
        if arm.best is not None and isinstance(arm.best.value(key), (int, float)):
            by_optimizer.setdefault(arm.optimizer, []).append(arm)
    by_optimizer = {k: v for k, v in by_optimizer.items() if len(v) > 1}
    if not by_optimizer:
        return None
    colors = arm_colors(workload)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    runs: list[Run] = []
    all_x: list[float] = []
    same_lr = True
    styles = iter(["-", "--", "-.", ":"] * 4)
    for optimizer, arms in by_optimizer.items():
        points = sorted(((float(a.best.value(key)), a.best, a) for a in arms), key=lambda p: p[0])
        ok = [(x, c, a) for x, c, a in points if math.isfinite(c.score)]
        style = next(styles)
        # a grey line per optimizer through its arms; each point in its arm's colour, as in every other figure
        axes[0].plot([x for x, *_ in ok], [c.mean for _, c, _ in ok], color="0.5", ls=style, label=optimizer)
        axes[1].plot([x for x, *_ in ok], [c.seconds for _, c, _ in ok], color="0.5", ls=style, label=optimizer)
        for x, c, a in ok:
            axes[0].errorbar(
                [x],
                [c.mean],
                yerr=[c.std if c.n > 1 else 0.0],
                marker="o",
                capsize=3,
                color=colors[a.arm],
                label=f"{a.arm}, n={c.n}",
            )
            mark = _unreliable(a)
            axes[1].scatter(
                [x], [c.seconds], marker="o" if not mark else "^", color=colors[a.arm], zorder=3, label=a.arm + mark
            )
        _mark_missing(
            axes[0],
            [x for x, c, _ in points if c.diverged],
            [x for x, c, _ in points if not c.diverged and not math.isfinite(c.score)],
            "0.3",
            optimizer,
        )
        points = [(x, c) for x, c, _ in points]
        same_lr &= len({repr(c.value("optimizer.lr")) for _, c in points}) == 1
        all_x += [x for x, _ in points]
        runs += [r for _, c in points for r in c.runs]
    base = workload.optimizers.get(workload.baseline)
    if (
        base is not None
        and base.best is not None
        and math.isfinite(base.best.score)
        and base.optimizer not in by_optimizer
    ):
        axes[0].axhline(base.best.score, color=colors[base.arm], ls="--", lw=1, label=f"{workload.baseline} (best)")
        axes[1].axhline(
            base.best.seconds,
            color=colors[base.arm],
            ls="--",
            lw=1,
            label=f"{workload.baseline} (best)" + _unreliable(base),
        )
        runs += base.best.runs
    if any(_unreliable(a) for arms in by_optimizer.values() for a in arms) or (base is not None and _unreliable(base)):
        axes[1].set_title("▲ / marked: wall-clock unreliable (machine shared or timing outlier)", fontsize=8)
    for ax, ylabel in zip(axes, (f"final {metric}", "training seconds")):
        _x_scale(ax, all_x)
        ax.set_xlabel("precondition_frequency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    lr_note = "the same lr at every frequency" if same_lr else "each frequency with its own tuned lr"
    fig.suptitle(_title(workload, f"final loss and training time vs precondition frequency ({lr_note})"))
    caption = (
        f"{workload.experiment}: final {metric} and training time vs precondition_frequency, each "
        f"optimizer's arms ({lr_note}); mean ± std where n > 1."
    )
    return _save(fig, out_dir, name, caption, workload.experiment, runs)


def train_loss_curves(workload: WorkloadResult, out_dir: Path, name: str) -> SavedFigure | None:
    """Training loss (logged window means) vs steps, each arm's best configuration, mean over seeds."""
    colors = arm_colors(workload)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    runs: list[Run] = []
    for arm_name, arm in workload.optimizers.items():
        if arm.best is None:
            continue
        frames = [r.metrics for r in arm.best.completed if not r.metrics.empty and "train/loss" in r.metrics.columns]
        series = [
            f[f["train/loss"].notna()].drop_duplicates("step", keep="last").set_index("step")["train/loss"]
            for f in frames
        ]
        if not series:
            continue
        common = sorted(set.intersection(*(set(x.index) for x in series)))
        if not common:
            continue
        mean = np.mean([x.loc[common].to_numpy(float) for x in series], axis=0)
        ax.plot(common, mean, color=colors[arm_name], label=f"{arm_name}, n={len(series)}")
        runs += arm.best.completed
    if not runs:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("train loss (mean over each log window)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(_title(workload, "training loss of each arm's best configuration (mean over seeds)", 70))
    caption = f"{workload.experiment}: training loss vs steps, best configuration per arm, mean over seeds."
    return _save(fig, out_dir, name, caption, workload.experiment, runs)


def cost_bars(workload: WorkloadResult, out_dir: Path, name: str) -> SavedFigure | None:
    """Per arm: the optimizer.step() share of training time and the optimizer state's memory."""
    arms = [a for a in workload.optimizers.values() if a.best is not None and a.best.completed]
    shares, memory = [], []
    for arm in arms:
        summaries = [r.summary or {} for r in arm.best.completed]
        ratio = [
            s["optimizer_seconds"] / s["train_seconds"]
            for s in summaries
            if s.get("train_seconds") and s.get("optimizer_seconds") is not None
        ]
        shares.append(100 * float(np.mean(ratio)) if ratio else math.nan)
        state = [s["optimizer_state_bytes"] for s in summaries if s.get("optimizer_state_bytes") is not None]
        memory.append(max(state) / 2**20 if state else math.nan)
    if not arms or all(math.isnan(v) for v in shares + memory):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    x = np.arange(len(arms))
    colors = arm_colors(workload)
    for ax, values, ylabel, fmt, timed in (
        (axes[0], shares, "optimizer.step() share of training time [%]", "{:.1f}%", True),
        (axes[1], memory, "optimizer state [MiB], companion included", "{:.2f}", False),
    ):
        drawn = [(xi, v, a) for xi, v, a in zip(x, values, arms) if not math.isnan(v)]
        ax.bar([xi for xi, _, _ in drawn], [v for _, v, _ in drawn], color=[colors[a.arm] for *_, a in drawn])
        for xi, v, a in zip(x, values, arms):  # nothing recorded: a note, not a zero-height bar
            mark = "\n(unreliable)" if timed and _unreliable(a) and not math.isnan(v) else ""
            ax.text(
                xi,
                0 if math.isnan(v) else v,
                ("not recorded" if math.isnan(v) else fmt.format(v)) + mark,
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(x, [a.arm for a in arms], rotation=30, ha="right")
        ax.set_ylabel(ylabel)
    shared = any(_unreliable(a) for a in arms)
    fig.suptitle(
        _title(
            workload,
            "optimizer time share and state memory per arm"
            + (" (time share of arms marked unreliable: machine shared or timing outlier)" if shared else ""),
        )
    )
    caption = (
        f"{workload.experiment}: optimizer.step() seconds / training seconds (mean over seeds) and the "
        "optimizer state's size, best configuration per arm."
    )
    return _save(fig, out_dir, name, caption, workload.experiment, [r for a in arms for r in a.best.completed])


def efficiency_fit(workload: WorkloadResult, metric: str, out_dir: Path, name: str) -> SavedFigure | None:
    fitted = {n: o for n, o in workload.optimizers.items() if o.schedule is not None and len(o.schedule.points) > 1}
    if not fitted or workload.target is None:
        return None
    colors = arm_colors(workload)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    runs: list[Run] = []
    for opt_name, opt in fitted.items():
        schedule = opt.schedule
        for ax, axis, attr in zip(axes, (schedule.steps, schedule.time), ("steps", "seconds")):
            pts = [p for p in schedule.points if math.isfinite(p.loss)]
            ax.scatter([getattr(p, attr) for p in pts], [p.loss for p in pts], color=colors[opt_name], zorder=3)
            fit = axis.outcome.fit
            if fit is not None and axis.outcome.reason is None:
                lo, hi = min(axis.outcome.x), max(axis.outcome.x)
                grid = np.linspace(0.9 * lo, 1.1 * hi, 200)
                ax.plot(
                    grid,
                    fit.predict(grid),
                    color=colors[opt_name],
                    label=f"{opt_name}: a={fit.a:.4g}, b={fit.b:.3g}, β={fit.beta:.3g}",
                )
            else:
                ax.plot([], [], color=colors[opt_name], label=f"{opt_name}: {axis.reason}")
            if attr == "seconds" and _unreliable(opt):
                ax.plot([], [], color=colors[opt_name], ls=":", label=f"{opt_name}{_unreliable(opt)}")
        runs += [r for c in opt.configs + opt.shortened if opt.best and c.family == opt.best.family for r in c.runs]
    for ax, xlabel in zip(axes, ("schedule length N [steps]", "training wall-clock T [s]")):
        ax.axhline(workload.target, color="k", ls="--", lw=1, label=f"target {workload.target:.{workload.decimals}f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_title(workload, "final loss vs schedule length, fit L = a + b·N^−β"))
    caption = (
        f"{workload.experiment}: final {metric} of the shortened-schedule runs of each optimizer's best "
        "configuration (mean over seeds) with the least-squares power-law fit; dashed: target."
    )
    return _save(fig, out_dir, name, caption, workload.experiment, runs)


def efficiency_bars(workload: WorkloadResult, out_dir: Path, name: str) -> SavedFigure | None:
    """Efficiency per arm, bars in the arm's colour (schedule fit hatched, with its seed-bootstrap interval).

    An arm that does not reach the target gets no bar (a zero-height bar reads as "efficiency 0"), only a note
    with its final-loss verdict against the baseline: an arm equivalent in final loss can miss the target by noise.
    """
    opts = [o for o in workload.optimizers.values() if o.best is not None]
    if workload.target is None or not opts:
        return None
    colors = arm_colors(workload)
    verdicts = {label: c.verdict for label, c in comparisons(workload, None).items()}
    has_fit = any(o.schedule is not None for o in opts)
    width = 0.4 if has_fit else 0.6
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    x = np.arange(len(opts))
    for ax, axis in zip(axes, ("steps", "time")):
        for xi, o in zip(x, opts):
            bars = [(-0.2 if has_fit else 0.0, getattr(o, f"efficiency_{axis}"), None, None)]
            if has_fit:
                fitted = getattr(o.schedule, axis) if o.schedule else None
                bars.append((0.2, fitted.efficiency if fitted else None, fitted.interval if fitted else None, "//"))
            for offset, value, interval, hatch in bars:
                if value is None:
                    why = "not\nreached" if o.best.curve is not None else "no\nruns"
                    if hatch and o.schedule is None:
                        why = "no short\nruns"
                    if o.arm in verdicts and why.startswith("not"):
                        why += f"\n(final: {verdicts[o.arm]})"
                    ax.text(
                        xi + offset,
                        0.02,
                        why,
                        ha="center",
                        va="bottom",
                        fontsize=6,
                        transform=blended_transform_factory(ax.transData, ax.transAxes),
                    )
                    continue
                err = None if interval is None else [[value - interval[0]], [interval[1] - value]]
                ax.bar(
                    xi + offset,
                    value,
                    width=width,
                    color=colors[o.arm],
                    hatch=hatch,
                    edgecolor="k",
                    lw=0.5,
                    yerr=err,
                    capsize=3,
                )
                mark = _unreliable(o) if axis == "time" else ""
                ax.text(
                    xi + offset,
                    value,
                    f"{value:.2f}" + ("\n(unreliable)" if mark else ""),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.axhline(1.0, color="k", lw=1)
        ax.set_xticks(x, [o.arm for o in opts], rotation=30, ha="right")
        ax.set_ylabel(f"efficiency vs {workload.baseline} ({axis}); >1 is better")
        if has_fit:
            ax.bar([], [], color="w", edgecolor="k", label="curve crossing")
            ax.bar([], [], color="w", edgecolor="k", hatch="//", label="schedule fit (95% seed bootstrap)")
            ax.legend(fontsize=7)
    fig.suptitle(_title(workload, f"efficiency vs {workload.baseline} in steps and in wall-clock"))
    shared = any(_unreliable(o) for o in opts)
    caption = (
        f"{workload.experiment}: {workload.baseline}'s steps (time) to target / each arm's, from the mean curves"
        + (
            " and from the schedule fit (hatched, with its 95% seed-bootstrap interval where the fit has one)"
            if has_fit
            else ""
        )
        + "; an arm that does not reach the target has no bar, only a note."
        + (" Time ratios marked unreliable come from a shared machine or a timing outlier." if shared else "")
    )
    runs = [r for o in opts for c in o.configs + o.shortened for r in c.runs]
    return _save(fig, out_dir, name, caption, workload.experiment, runs)


def latest_image(run: Run) -> tuple[int, Path] | None:
    if run.run_dir is None or not (run.run_dir / "images").is_dir():
        return None
    found = [
        (int(m.group(1)), p) for p in (run.run_dir / "images").glob("step_*.png") if (m := _IMAGE_RE.search(p.name))
    ]
    return max(found) if found else None


def image_grid(workload: WorkloadResult, out_dir: Path, name: str) -> SavedFigure | None:
    panels = []
    for opt in workload.optimizers.values():
        if opt.best is None:
            continue
        for run in opt.best.completed or opt.best.runs:
            image = latest_image(run)
            if image is not None:
                panels.append((opt.arm, run, *image))
                break
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.8), squeeze=False, layout="constrained")
    for ax, (opt_name, run, step, path) in zip(axes[0], panels):
        ax.imshow(plt.imread(path))
        ax.set_title(f"{opt_name}\nstep {step}, seed {run.seed}", fontsize=9)
        ax.axis("off")
    fig.suptitle(_title(workload, "latest colorization samples, best configuration per optimizer"))
    caption = (
        f"{workload.experiment}: latest images/step_*.png of each optimizer's best configuration "
        "(first seed with images)."
    )
    return _save(fig, out_dir, name, caption, workload.experiment, [p[1] for p in panels])


def profile_figure(analysis: Analysis, out_dir: Path, name: str, experiment: str) -> SavedFigure | None:
    # A profile is a fraction of workloads: over one workload it is a step from 0 to 1 that says nothing the
    # table does not (the report says so instead of drawing it).
    if len(analysis.workloads) < 2 or not any(w.target is not None for w in analysis.workloads):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for ax, axis in zip(axes, ("steps", "time")):
        ratios = performance_ratios(times_to_target(analysis, axis))
        taus = default_taus(ratios)
        profile = performance_profile(ratios, taus)
        colors = {name: c for w in reversed(analysis.workloads) for name, c in arm_colors(w).items()}
        for opt_name in profile.columns:
            ax.step(profile.index, profile[opt_name], where="post", label=opt_name, color=colors.get(opt_name))
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"τ (ratio to the best {axis}-to-target)")
        ax.set_ylabel("ρ(τ): fraction of workloads")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{experiment}: performance profiles over {len(analysis.workloads)} workload(s)")
    caption = f"{experiment}: AlgoPerf-style performance profiles of steps- and time-to-target over workloads."
    runs = [r for w in analysis.workloads for o in w.optimizers.values() if o.best for r in o.best.runs]
    return _save(fig, out_dir, name, caption, experiment, runs)
