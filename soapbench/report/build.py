"""Build a whole report into a directory, and publish it atomically.

``build_report`` loads the runs (local store or W&B), analyses them, draws the figures and writes
report.md, report.csv, configurations.csv and sources.json into a directory. ``publish`` does that in a
temporary sibling of the output directory and renames it into place only when everything succeeded,
so a failed report leaves neither a half-written output nor a damaged previous report. It replaces only
a new or empty folder or one a report wrote (its ``.soapbench-report`` lists the files), never the run store.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from soapbench.errors import ConfigError
from soapbench.naming import plain_name
from soapbench.outputs import OutputFolderError, owned_files, run_store_error, write_owner_marker
from soapbench.report import figures as figs
from soapbench.report.analysis import Analysis, analyze, read_tuning_log
from soapbench.report.html import write_html
from soapbench.report.reference import Reference, load_reference
from soapbench.report.render import markdown, sources_json, write_tables
from soapbench.report.store import ReportError, Run, load_experiment


@dataclass
class ReportRequest:
    experiments: Sequence[str]
    results_dir: Path
    baseline: str = "adamw"
    target: float | None = None
    metric: str | None = None
    reference: str | None = None
    reference_dir: Path | None = None  # default: <results_dir>/reference
    wandb_project: str | None = None
    ignore_keys: Sequence[str] = field(default_factory=tuple)
    figures: bool = True
    command: str = ""


# In every report folder: the files the report wrote, so a later report replaces those and nothing else.
OWNER_MARKER = ".soapbench-report"

# The paper numbers shipped with the repository (the package is installed editable from it).
REPO_REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference"


def reference_dir(request: ReportRequest) -> Path:
    """--reference-dir, else <results-dir>/reference if it exists, else the repository's results/reference."""
    if request.reference_dir is not None:
        return request.reference_dir
    local = request.results_dir / "reference"
    return local if local.is_dir() else REPO_REFERENCE_DIR


def load_runs(request: ReportRequest) -> list[Run]:
    runs: list[Run] = []
    for experiment in request.experiments:
        if request.wandb_project:
            from soapbench.report.wandb_source import load_wandb_runs  # noqa: PLC0415 - optional source

            runs += load_wandb_runs(request.wandb_project, experiment)
        else:
            runs += load_experiment(request.results_dir, experiment)
    return runs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def draw_figures(analysis: Analysis, out_dir: Path) -> list[figs.SavedFigure]:
    saved: list[figs.SavedFigure | None] = []
    several = len(analysis.workloads) > 1
    for w in analysis.workloads:
        suffix = f"_{_slug(w.workload)}" if several else ""
        saved += [
            figs.loss_curves(w, analysis.metric, out_dir, f"loss_curves{suffix}"),
            figs.train_loss_curves(w, out_dir, f"train_loss{suffix}"),
            figs.lr_sensitivity(w, analysis.metric, out_dir, f"lr_sensitivity{suffix}"),
            figs.frequency_ablation(w, analysis.metric, out_dir, f"frequency_ablation{suffix}"),
            figs.efficiency_fit(w, analysis.metric, out_dir, f"efficiency_fit{suffix}"),
            figs.efficiency_bars(w, out_dir, f"efficiency{suffix}"),
            figs.cost_bars(w, out_dir, f"cost{suffix}"),
            figs.image_grid(w, out_dir, f"images{suffix}"),
        ]
    name = "+".join(sorted({w.experiment for w in analysis.workloads}))
    saved.append(figs.profile_figure(analysis, out_dir, "performance_profile", name))
    return [f for f in saved if f is not None]


def prepare(request: ReportRequest) -> tuple[Analysis, Reference | None]:
    """Everything that can fail on bad input, before anything is written."""
    reference = None
    if request.reference:
        reference = load_reference(request.reference, reference_dir(request))
    runs = load_runs(request)
    if request.target is not None and len({r.workload for r in runs if r.status != "unreadable"}) > 1:
        raise ReportError("--target applies to one workload, but the selected runs span several")
    metric = request.metric
    if metric is None and reference is not None and any(reference.metric in r.metrics.columns for r in runs):
        metric = reference.metric  # compare like with like (e.g. val/mse for the colorization paper)
    # The tuning log first: it says which runs tuned and which are reported, and so what each mean averages.
    logs = {experiment: read_tuning_log(request.results_dir, experiment) for experiment in request.experiments}
    tuning = {experiment: log for experiment, log in logs.items() if log is not None}
    analysis = analyze(runs, metric, request.baseline, request.target, request.ignore_keys, tuning)
    if not analysis.workloads:
        raise ReportError("no readable runs (every run directory lacks a parsable config.yaml)")
    return analysis, reference


def build_report(
    analysis: Analysis, reference: Reference | None, out_dir: Path, command: str, figures: bool = True
) -> str:
    """Write every output into ``out_dir``; returns the main table(s) as Markdown."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    saved = draw_figures(analysis, out_dir) if figures else []
    report, tables = markdown(analysis, command, generated, reference, saved)
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    write_html(report, analysis, saved, out_dir)
    write_tables(out_dir, analysis, reference)
    sources = sources_json(analysis, command, saved)
    sources["generated"] = generated
    (out_dir / "sources.json").write_text(json.dumps(sources, indent=2, default=str) + "\n", encoding="utf-8")
    return tables


def publish(request: ReportRequest, out_dir: Path) -> str:
    """prepare + build into a temp dir next to ``out_dir``, then swap it in; returns the main table(s).

    Only a new or empty folder, or one a report wrote and nobody added to, is replaced; the files it
    removes are those the previous report listed in its marker.
    """
    for experiment in request.experiments:
        try:
            plain_name("--experiment", experiment, "lm_sweep")  # a folder under runs/, and the default --out's name
        except ConfigError as error:
            raise ReportError(str(error)) from None
    out_dir = out_dir.resolve()
    try:
        problem = run_store_error(out_dir, request.results_dir)
        if problem:
            raise OutputFolderError(problem)
        previous = owned_files(out_dir, OWNER_MARKER, "report")
    except OutputFolderError as error:
        raise ReportError(str(error)) from None
    analysis, reference = prepare(request)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    old = None
    try:
        tables = build_report(analysis, reference, tmp, request.command, request.figures)
        write_owner_marker(tmp, OWNER_MARKER, "scripts/report.py", [p.name for p in tmp.iterdir()])
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out_dir.rename(old)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out_dir.exists():
            old.rename(out_dir)
        raise
    if old is not None:
        for path in previous:
            (old / path.name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a file added since the check stays where it is
            old.rmdir()
    return tables
