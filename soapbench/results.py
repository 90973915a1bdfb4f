"""The local results store: one directory per run, readable even if the run was killed.

    results/runs/<experiment>/<run_name>/
      config.yaml     the fully resolved config (written once, before training starts)
      metrics.jsonl   append-only, one JSON record per log event; every record has
                      step, train_seconds, tokens and samples
      summary.json    status (running | completed | diverged | failed | interrupted) and headline
                      numbers, rewritten atomically at every evaluation and at the end
      checkpoint.pt   the latest checkpoint (atomic)
      checkpoint.prev.pt  the one before it, kept in case the latest cannot be read
      .lock           held (flock) by the process training the run

Every table and figure of ``scripts/report.py`` is remade from these files alone.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from soapbench.errors import SoapbenchError

# interrupted: stopped by its environment (a signal, a full disk, an unreadable checkpoint, W&B transport);
# the next plain re-run resumes it. failed: the training code raised; kept as a result and skipped.
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
# Temp files of atomic writes: ".<target name>.<random>.tmp" beside the target.
TEMP_SUFFIX = ".tmp"


def utc_now() -> str:
    """The timestamps of summaries and failure records."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete temp files that killed writers left in ``run_dir`` (call with the run's lock held)."""
    run_dir = Path(run_dir)
    targets = (SUMMARY_FILE, METRICS_FILE, CONFIG_FILE, CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE)
    # Also the suffix-less names older versions wrote (".checkpoint.pt.<random>").
    stale = [p for name in targets for p in run_dir.glob(f".{name}.*") if p.is_file()] if run_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _json_safe(value: Any) -> Any:
    """JSON has no inf/nan: store them as strings so a diverged loss stays visible and parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class RunStore:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    @property
    def summary_path(self) -> Path:
        return self.run_dir / SUMMARY_FILE

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def remove_checkpoints(self) -> None:
        """Drop this run's own checkpoint files (a finished run that need not be resumed or restarted from)."""
        for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
            (self.run_dir / name).unlink(missing_ok=True)

    def read_summary(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, ValueError):  # missing, unreadable or cut short: no usable summary
            return None

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if summary.get("status") not in STATUSES:
            raise ValueError(f"summary status must be one of {STATUSES}, got {summary.get('status')!r}")
        atomic_write_text(self.summary_path, json.dumps(_json_safe(dict(summary)), indent=2, sort_keys=True) + "\n")

    def write_config(self, config_yaml: str) -> None:
        atomic_write_text(self.run_dir / CONFIG_FILE, config_yaml)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(_json_safe(dict(record)), sort_keys=True)
        with open(self.metrics_path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete records; a line cut short by a kill ends the log. Bytes that are not UTF-8 (a damaged
        disk or a foreign writer: the trainer writes ASCII) are bad input naming the file, never a crash."""
        records = []
        if not self.metrics_path.exists():
            return records
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise SoapbenchError(
                f"{self.metrics_path}: byte {error.start} is not UTF-8 text, so the metrics log is damaged; "
                f"restore it from a backup, or cut the file before byte {error.start} (the run then resumes and "
                "marks the records lost as metrics_gaps in summary.json)"
            ) from None
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def truncate_metrics(self, keep_records: int) -> list[dict[str, Any]]:
        """On resume, drop records logged after the checkpoint so the log matches an uninterrupted run.

        Returns the records kept: fewer than ``keep_records`` when the log was cut short (the caller says so)."""
        records = self.read_metrics()[:keep_records]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_text(self.metrics_path, text)
        return records
