"""Weights & Biases logging through the real ``wandb`` library, offline by default.

Offline runs need no account or network and are written under the run directory
(``<run_dir>/wandb/offline-run-*``); ``wandb sync <that dir>`` uploads them later.
Every record carries both ``step`` and ``train_seconds``, and both are declared as
step metrics, so any chart can use optimizer steps or training wall-clock as x-axis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

WANDB_MODES = ("offline", "online", "disabled")


class WandbTracker:
    def __init__(
        self,
        *,
        mode: str,
        project: str,
        entity: str | None,
        group: str,
        name: str,
        tags: list[str],
        config: Mapping[str, Any],
        run_dir: Path,
        run_id: str | None,
    ):
        self.run = None
        if mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            name=name,
            tags=tags,
            config=dict(config),
            dir=str(run_dir),
            mode=mode,
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        for axis in ("step", "train_seconds", "tokens", "samples"):
            self.run.define_metric(axis, hidden=False)
        for prefix in ("train", "val", "val_ema", "time", "memory", "optimizer"):
            self.run.define_metric(f"{prefix}/*", step_metric="step")

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, record: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.log(dict(record))

    def log_images(self, step: int, paths: list[Path]) -> None:
        if self.run is None or not paths:
            return
        import wandb

        self.run.log({"step": step, "images/eval": [wandb.Image(str(p), caption=p.name) for p in paths]})

    def finish(self, summary: Mapping[str, Any], exit_code: int = 0) -> None:
        if self.run is None:
            return
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self.run.summary[key] = value
        self.run.finish(exit_code=exit_code)
        self.run = None
