"""Pull runs from the W&B public API into the same in-memory form as the local store.

Assumes the trainer logs to W&B what it writes locally: the resolved Hydra config as the run config,
the metrics.jsonl records (same keys) as history rows, and the summary.json fields in the run
summary. Runs are selected by ``config.experiment_name``. A W&B run state maps to a store status as
finished -> completed, crashed/failed -> failed, killed/preempted -> failed, running/preempting ->
running, unless the summary carries the trainer's own ``status`` (which also knows ``diverged``).

Any problem reaching W&B (package missing, no API key, no network, unknown project) is raised as a
one-line ReportError; the report never half-loads a project.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from soapbench.report.store import STATUSES, ReportError, Run, flatten

_STATE_TO_STATUS = {
    "finished": "completed",
    "crashed": "failed",
    "failed": "failed",
    "killed": "failed",
    "preempted": "failed",
    "running": "running",
    "preempting": "running",
}


def _status(state: str | None, summary: dict[str, Any]) -> str:
    status = summary.get("status") or _STATE_TO_STATUS.get(str(state), "failed")
    if status not in STATUSES:
        status = "failed"
    final = summary.get("final_val_loss")
    unusable = final is None or (isinstance(final, (int, float)) and not math.isfinite(final))
    if status == "completed" and unusable:
        status = "diverged"
    return status


def load_wandb_runs(project: str, experiment: str) -> list[Run]:
    """Runs of ``experiment`` in W&B project ``project`` ("entity/project" or "project")."""
    try:
        import wandb  # noqa: PLC0415 - optional dependency, only needed for this source
    except ImportError as err:
        raise ReportError("--wandb-project needs the wandb package, which is not installed") from err
    try:
        api = wandb.Api()
        wandb_runs = list(api.runs(project, filters={"config.experiment_name": experiment}))
    except Exception as err:  # noqa: BLE001 - auth, network and lookup errors all end the same way
        raise ReportError(f"cannot read W&B project {project!r}: {type(err).__name__}: {err}".splitlines()[0]) from err
    if not wandb_runs:
        raise ReportError(f"W&B project {project!r} has no runs with experiment_name={experiment!r}")

    runs: list[Run] = []
    for wrun in wandb_runs:
        config = {k: v for k, v in dict(wrun.config).items() if not str(k).startswith("_")}
        summary = {k: v for k, v in dict(wrun.summary).items() if not str(k).startswith("_")}
        rows = [dict(row) for row in wrun.scan_history()]
        metrics = pd.DataFrame.from_records(rows)
        if "step" not in metrics.columns and "_step" in metrics.columns:
            metrics["step"] = metrics["_step"]
        if not metrics.empty and "event" not in metrics.columns:
            is_eval = metrics.filter(like="val/").notna().any(axis=1)
            metrics["event"] = is_eval.map({True: "eval", False: "train"})
        runs.append(
            Run(
                source=str(wrun.url),
                experiment=experiment,
                name=str(wrun.name),
                config=config,
                metrics=metrics,
                summary=summary,
                status=_status(getattr(wrun, "state", None), summary),
                problems=[],
                run_dir=None,
                config_sha256=None,
                flat=flatten(config),
            )
        )
    return runs
