"""Weights & Biases logging through the real ``wandb`` library, offline by default.

Offline runs need no account or network and are written under the run directory
(``<run_dir>/wandb/offline-run-*``); ``wandb sync <that dir>`` uploads them later.
Every record carries both ``step`` and ``train_seconds``, and both are declared as
step metrics, so any chart can use optimizer steps or training wall-clock as x-axis.

Records reach W&B when they are checkpointed (``commit()``, called right after each checkpoint
and at the end): a run killed between checkpoints and resumed recomputes exactly the records
after its checkpoint, so its W&B history equals an uninterrupted run's, with no duplicates.
``metrics.jsonl`` is written live. ``online`` mode that cannot reach the W&B server within
``ONLINE_TIMEOUT_SECONDS`` falls back to offline with one warning line; the run goes on.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

WANDB_MODES = ("offline", "online", "disabled")
ONLINE_TIMEOUT_SECONDS = 20
DEFAULT_BASE_URL = "https://api.wandb.ai"


def _unreachable(base_url: str) -> str | None:
    """Why the W&B server cannot be reached (None if a TCP connection opens), within a bounded time."""
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=ONLINE_TIMEOUT_SECONDS / 2):
            return None
    except OSError as error:
        return f"{parsed.hostname}:{port}: {error.strerror or error}"


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
        self.mode = mode
        self.pending: list[dict[str, Any]] = []  # logged, not yet checkpointed
        if mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        arguments = dict(
            project=project, entity=entity, group=group, name=name, tags=tags, config=dict(config),
            dir=str(run_dir), id=run_id, resume="allow" if run_id else None,
        )  # fmt: skip
        settings = dict(console="off", x_disable_stats=True)
        if mode == "online":
            reason = _unreachable(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
            if reason is None:
                try:
                    self.run = wandb.init(
                        **arguments,
                        mode="online",
                        settings=wandb.Settings(**settings, init_timeout=ONLINE_TIMEOUT_SECONDS),
                    )
                except Exception as error:  # no key, refused, timed out: the run matters more than the live chart
                    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            if self.run is None:
                print(
                    f"warning: W&B server unreachable ({reason}); logging offline to {Path(run_dir) / 'wandb'}, "
                    "upload later with `wandb sync`",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
                self.mode = "offline"
        if self.run is None:
            self.run = wandb.init(**arguments, mode="offline", settings=wandb.Settings(**settings))
        for axis in ("step", "train_seconds", "tokens", "samples"):
            self.run.define_metric(axis, hidden=False)
        for prefix in ("train", "val", "val_ema", "time", "memory", "optimizer"):
            self.run.define_metric(f"{prefix}/*", step_metric="step")

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, record: Mapping[str, Any]) -> None:
        self.pending.append(dict(record))

    def log_images(self, step: int, paths: list[Path]) -> None:
        if self.run is None or not paths:
            return
        import wandb

        self.pending.append({"step": step, "images/eval": [wandb.Image(str(p), caption=p.name) for p in paths]})

    def commit(self) -> None:
        """Send what was logged up to now: call once it is checkpointed (or final)."""
        pending, self.pending = self.pending, []
        self._send(pending)

    def _send(self, records: list[dict[str, Any]]) -> None:
        if self.run is not None:
            for record in records:
                self.run.log(record)

    def finish(self, summary: Mapping[str, Any], exit_code: int = 0, *, commit: bool = True) -> None:
        """End the W&B run; ``commit=False`` (an interruption) drops the records a resume will recompute."""
        if commit:
            self.commit()
        self.pending = []
        if self.run is None:
            return
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self.run.summary[key] = value
        self.run.finish(exit_code=exit_code)
        self.run = None
