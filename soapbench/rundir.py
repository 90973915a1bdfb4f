"""Which directory a run writes to, and what to do when it already exists.

A run is named ``<optimizer>-<model>[-<swept values>]-s<seed>-<hash>`` (see :mod:`soapbench.naming`), the hash covering everything
that changes what the run computes. Running the same config again therefore finds the
same directory: a finished run (completed, diverged or failed — all results) is
skipped, an interrupted one resumes from its checkpoint, and one killed before its
first checkpoint starts over. Nothing is ever overwritten silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from soapbench.config import config_hash
from soapbench.errors import ConfigError
from soapbench.naming import run_name
from soapbench.results import CHECKPOINT_FILE, RunStore

FINISHED = ("completed", "diverged", "failed")


@dataclass
class RunPlan:
    run_dir: Path
    run_name: str
    config_hash: str
    # "fresh", "resume" or "skip"
    action: str
    checkpoint: Path | None = None
    previous_summary: dict[str, Any] | None = None


def plan_run(cfg: Mapping[str, Any]) -> RunPlan:
    digest = config_hash(cfg)
    name = cfg.get("run_name") or run_name(cfg, digest)
    if "/" in name or name in ("", ".", ".."):
        raise ConfigError(f"run_name: {name!r} is not a valid directory name")
    experiment = cfg.get("experiment_name") or "default"
    run_dir = Path(cfg["paths"]["results_dir"]) / "runs" / experiment / name
    resume = str(cfg.get("resume", "auto"))
    store = RunStore(run_dir)

    if resume not in ("auto", "never"):
        checkpoint = Path(resume)
        if checkpoint.is_dir():
            checkpoint = checkpoint / CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise ConfigError(f"resume: no checkpoint at {checkpoint}; pass a checkpoint file or a run directory holding one")
        return RunPlan(run_dir, name, digest, "resume", checkpoint, store.read_summary())

    summary = store.read_summary()
    if resume == "never" and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"resume: run directory {run_dir} already exists; use resume=auto to continue it or set run_name for a new run"
        )
    if summary and summary.get("status") in FINISHED:
        return RunPlan(run_dir, name, digest, "skip", None, summary)
    if store.checkpoint_path.is_file():
        return RunPlan(run_dir, name, digest, "resume", store.checkpoint_path, summary)
    return RunPlan(run_dir, name, digest, "fresh", None, summary)
