"""Report figures (matplotlib, Agg backend), each saved as PNG with a ``<name>.sources.json`` sidecar.

Figures per workload (file names get a ``_<workload>`` suffix when a report covers several):

* ``loss_curves``: validation loss vs optimizer steps and vs training wall-clock for each optimizer's
  best configuration: mean over seeds with a min–max band (as in the SOAP-Muon report's Figure 1);
  the wall-clock axis is the mean cumulative ``train_seconds`` at each eval. Dashed line: the target.
* ``lr_sensitivity``: final loss vs learning rate (log x). For each lr the best configuration with that
  lr is shown (other swept hyperparameters tuned), mean ± std over seeds; × at the top = every
  configuration at that lr diverged.
* ``frequency_ablation``: final loss and training seconds vs ``precondition_frequency`` (log x), best
  configuration per frequency, the baseline's best as a horizontal line (SOAP paper Fig. 1 right/Fig. 7).
* ``efficiency_fit``: final loss vs budget fraction with the fitted L(N) = a + b·N^−β and the target
  (SOAP paper Fig. 2), in steps and in seconds.
* ``efficiency``: bars of efficiency vs the baseline in steps and in time (curve crossing and, where it
  exists, the schedule fit); "not reached" is written where there is no ratio.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from soapbench.report.analysis import Analysis, ConfigResult, WorkloadResult, best_of  # noqa: E402
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


def _colors(names: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _label(config: ConfigResult) -> str:
    params = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in config.hyperparameters.items())
    return f"{config.optimizer}" + (f" ({params})" if params else "") + f", n={config.n}"


def loss_curves(workload: WorkloadResult, metric: str, out_dir: Path, name: str) -> SavedFigure | None:
    bests = {n: o.best for n, o in workload.optimizers.items() if o.best is not None and o.best.curve is not None}
    if not bests:
        return None
    colors = _colors(list(workload.optimizers))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    lows, highs = [], []
    for opt_name, config in bests.items():
        curve = config.curve
        for ax, x in zip(axes, ("step", "seconds")):
            ax.plot(curve[x], curve["mean"], color=colors[opt_name], label=_label(config))
            if config.n > 1:
                ax.fill_between(curve[x], curve["min"], curve["max"], color=colors[opt_name], alpha=0.2, lw=0)
        values = curve["mean"].to_numpy(float)
        values = values[np.isfinite(values)]
        if values.size:
            lows.append(values.min())
            # skip the first tenth of the curve so the initial loss does not flatten the interesting part
            highs.append(values[len(values) // 10 :].max())
    for ax, xlabel in zip(axes, ("optimizer steps", "training wall-clock [s]")):
        if workload.target is not None:
            ax.axhline(workload.target, color="k", ls="--", lw=1, label=f"target {workload.target:.4f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        if lows:
            pad = 0.05 * max(max(highs) - min(lows), 1e-12)
            ax.set_ylim(min(lows) - pad, max(highs) + pad)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(_title(workload, f"{metric} of each optimizer's best configuration (mean, min–max over seeds)"))
    caption = (
        f"{workload.experiment}: {metric} vs steps and vs training seconds, best configuration per optimizer, "
        "mean over seeds with min–max band; dashed: target."
    )
    runs = [r for c in bests.values() for r in c.completed]
    return _save(fig, out_dir, name, caption, workload.experiment, runs)


def _sweep_profile(configs: Sequence[ConfigResult], key: str) -> dict[float, ConfigResult]:
    """For each value of ``key``: the best configuration with that value (the others tuned)."""
    values = sorted({c.value(key) for c in configs if isinstance(c.value(key), (int, float))})
    return {float(v): best_of(configs, {key: v}) for v in values}


def _sweep_figure(
    workload: WorkloadResult, metric: str, key: str, out_dir: Path, name: str, with_time: bool
) -> SavedFigure | None:
    swept = {
        n: _sweep_profile(o.configs, key)
        for n, o in workload.optimizers.items()
        if len({c.value(key) for c in o.configs if c.value(key) is not None}) > 1
    }
    if not swept:
        return None
    colors = _colors(list(workload.optimizers))
    short = key.split(".")[-1]
    fig, axes = plt.subplots(1, 2 if with_time else 1, figsize=(12 if with_time else 7.5, 4.8), squeeze=False,
                             layout="constrained")
    loss_ax = axes[0][0]
    top = blended_transform_factory(loss_ax.transData, loss_ax.transAxes)
    runs: list[Run] = []
    for opt_name, profile in swept.items():
        xs = np.array([v for v, c in profile.items() if math.isfinite(c.score)])
        ok = [c for c in profile.values() if math.isfinite(c.score)]
        diverged = [v for v, c in profile.items() if not math.isfinite(c.score) and c.diverged]
        missing = [v for v, c in profile.items() if not math.isfinite(c.score) and not c.diverged]
        loss_ax.errorbar(xs, [c.mean for c in ok], yerr=[0 if math.isnan(c.std) else c.std for c in ok],
                         marker="o", capsize=3, color=colors[opt_name], label=opt_name)
        if diverged:
            loss_ax.scatter(diverged, [0.97] * len(diverged), marker="x", s=60, color=colors[opt_name], transform=top,
                            label=f"{opt_name}: diverged")
        if missing:
            loss_ax.scatter(missing, [0.97] * len(missing), marker="o", s=40, facecolors="none",
                            edgecolors=colors[opt_name], transform=top, label=f"{opt_name}: no completed seed")
        if with_time:
            axes[0][1].plot(xs, [c.seconds for c in ok], marker="o", color=colors[opt_name], label=opt_name)
        runs += [r for c in profile.values() for r in c.runs]
    base = workload.optimizers.get(workload.baseline)
    if base is not None and base.best is not None and math.isfinite(base.best.score) and workload.baseline not in swept:
        loss_ax.axhline(base.best.score, color="k", ls="--", lw=1, label=f"{workload.baseline} (best)")
        if with_time:
            axes[0][1].axhline(base.best.seconds, color="k", ls="--", lw=1, label=f"{workload.baseline} (best)")
        runs += base.best.runs
    for ax, ylabel in zip(axes[0], (f"final {metric}", "training seconds")):
        ax.set_xscale("log")
        ax.set_xlabel(short)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    what = "final loss" + (" and training time" if with_time else "") + f" vs {short}"
    what_long = f"{what} (best configuration per value, mean ± std over seeds)"
    fig.suptitle(_title(workload, what_long, 100 if with_time else 70))
    caption = (
        f"{workload.experiment}: {what}; for each {short}, the best configuration with that value "
        "(other swept hyperparameters tuned); × at the top = diverged, ○ at the top = no completed seed."
    )
    return _save(fig, out_dir, name, caption, workload.experiment, runs)


def lr_sensitivity(workload: WorkloadResult, metric: str, out_dir: Path, name: str) -> SavedFigure | None:
    return _sweep_figure(workload, metric, "optimizer.lr", out_dir, name, with_time=False)


def frequency_ablation(workload: WorkloadResult, metric: str, out_dir: Path, name: str) -> SavedFigure | None:
    return _sweep_figure(workload, metric, "optimizer.precondition_frequency", out_dir, name, with_time=True)


def efficiency_fit(workload: WorkloadResult, metric: str, out_dir: Path, name: str) -> SavedFigure | None:
    fitted = {n: o for n, o in workload.optimizers.items() if o.schedule is not None and len(o.schedule.points) > 1}
    if not fitted or workload.target is None:
        return None
    colors = _colors(list(workload.optimizers))
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
                ax.plot(grid, fit.predict(grid), color=colors[opt_name],
                        label=f"{opt_name}: a={fit.a:.4g}, b={fit.b:.3g}, β={fit.beta:.3g}")
            else:
                ax.plot([], [], color=colors[opt_name], label=f"{opt_name}: {axis.reason}")
        runs += [r for c in opt.configs + opt.shortened if opt.best and c.family == opt.best.family for r in c.runs]
    for ax, xlabel in zip(axes, ("schedule length N [steps]", "training wall-clock T [s]")):
        ax.axhline(workload.target, color="k", ls="--", lw=1, label=f"target {workload.target:.4f}")
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
    opts = [o for o in workload.optimizers.values() if o.best is not None]
    if workload.target is None or not opts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    x = np.arange(len(opts))
    for ax, axis in zip(axes, ("steps", "time")):
        curve = [getattr(o, f"efficiency_{axis}") for o in opts]
        curve_why = ["not\nreached" if o.best.curve is not None else "no\nruns" for o in opts]
        fit = [getattr(o.schedule, axis).efficiency if o.schedule else None for o in opts]
        fit_why = [("no fit" if getattr(o.schedule, axis).outcome.reason else "not\nreached") if o.schedule
                   else "no short\nruns" for o in opts]
        bars = ((-0.2, curve, curve_why, "curve crossing"), (0.2, fit, fit_why, "schedule fit"))
        for offset, values, why, label in bars:
            heights = [v if v is not None else 0.0 for v in values]
            ax.bar(x + offset, heights, width=0.4, label=label)
            for xi, v, w in zip(x + offset, values, why):
                ax.text(xi, v if v is not None else 0.02, f"{v:.2f}" if v is not None else w,
                        ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="k", lw=1)
        ax.set_xticks(x, [o.optimizer for o in opts], rotation=30)
        ax.set_ylabel(f"efficiency vs {workload.baseline} ({axis}); >1 is better")
        ax.legend(fontsize=7)
    fig.suptitle(_title(workload, f"efficiency vs {workload.baseline} in steps and in wall-clock"))
    caption = (
        f"{workload.experiment}: {workload.baseline}'s steps (time) to target / each optimizer's, "
        "from the mean curves and from the schedule fit."
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
                panels.append((opt.optimizer, run, *image))
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
    if not any(w.target is not None for w in analysis.workloads):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for ax, axis in zip(axes, ("steps", "time")):
        ratios = performance_ratios(times_to_target(analysis, axis))
        taus = default_taus(ratios)
        profile = performance_profile(ratios, taus)
        for opt_name in profile.columns:
            ax.step(profile.index, profile[opt_name], where="post", label=opt_name)
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
