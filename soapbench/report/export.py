"""The run store as two tables anyone can query: ``runs.parquet`` and ``metrics.parquet``.

``runs.parquet`` has one row per run directory, whatever its status:

* identity: ``experiment``, ``run`` (the directory name), ``identity`` (the config-and-data hash the run is filed
  under), ``status``, ``optimizer``, ``workload``, ``seed``, ``role`` (``tune`` or ``report`` as the
  reproduction's tuning.json lists the run; empty for a run no tuning log lists);
* ``config.<dotted key>``: every leaf of the stored ``config.yaml`` (lists as their JSON text);
* ``summary.<key>``: every scalar of ``summary.json`` (final losses on the fixed set and the whole split, train
  seconds, device, ``machine_shared``, the world size, ...), ``summary.versions.<package>`` for the versions;
  lists and nested records (segments, failures) as their JSON text;
* ``problems``: what the store loader found wrong with the run (a truncated metrics file, no summary), ``; ``-joined.

``metrics.parquet`` has one row per logged record: ``experiment``, ``run``, ``identity``, ``event`` (train or
eval), ``step`` and every metric the record carries (``train/loss``, ``val/loss``, ``train_seconds``, ...).

Both are written with pandas and pyarrow and read back by pandas, DuckDB or polars::

    duckdb -c "SELECT optimizer, median(\\"summary.final_full_val_loss\\") AS loss FROM 'results/export/runs.parquet'
               WHERE status = 'completed' GROUP BY optimizer ORDER BY loss"

The export never writes over files it did not make: its folder is new, empty, or one it wrote before and nobody
added to (its marker lists the files; :mod:`soapbench.outputs`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from soapbench.outputs import OutputFolderError, owned_files, run_store_error, write_owner_marker
from soapbench.report.analysis import read_tuning_log, run_role, tuning_roles
from soapbench.report.store import ReportError, Run, load_experiment

MARKER = ".soapbench-export"
OUTPUTS = ("runs.parquet", "metrics.parquet")


def _cell(value: Any) -> Any:
    """A parquet-friendly scalar: numbers, strings, booleans and None as they are, anything else as JSON text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else (None if math.isnan(value) else value)
    return json.dumps(value, sort_keys=True, default=str)


def _leaves(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping) and value:
            leaves.update(_leaves(value, name))
        else:
            leaves[name] = _cell(value)
    return leaves


def _missing(value: Any) -> bool:
    """None, or the NaN pandas puts where a record lacks a key (never the text "nan")."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> Any:
    """Summaries write non-finite floats as the strings "inf"/"nan"; the table has them as floats."""
    if isinstance(value, str) and value.lower() in ("inf", "-inf", "nan", "infinity", "-infinity"):
        return float(value)
    return value


def run_row(run: Run, roles: Mapping[tuple[str, str, str], str] | None = None) -> dict[str, Any]:
    summary = run.summary or {}
    row: dict[str, Any] = {
        "experiment": run.experiment,
        "run": run.name,
        "identity": run.config_hash,
        "status": run.status,
        "optimizer": run.optimizer,
        "workload": run.workload,
        "seed": _cell(run.seed),
        "role": run_role(run, roles or {}),
    }
    row.update(_leaves(run.config, "config"))
    row.update({key: _number(value) for key, value in _leaves(summary, "summary").items()})
    row["problems"] = "; ".join(run.problems)
    return row


def metric_rows(run: Run) -> pd.DataFrame:
    frame = run.metrics.copy()
    frame.insert(0, "identity", run.config_hash)
    frame.insert(0, "run", run.name)
    frame.insert(0, "experiment", run.experiment)
    return frame


def experiments_in(results_dir: Path) -> list[str]:
    runs_root = results_dir / "runs"
    if not runs_root.is_dir():
        raise ReportError(f"no run store at {runs_root}; pass --results-dir with a runs/ folder")
    names = sorted(p.name for p in runs_root.iterdir() if p.is_dir())
    if not names:
        raise ReportError(f"the run store {runs_root} has no experiments")
    return names


def _frames(results_dir: Path, experiments: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, runs = [], []
    for experiment in experiments:
        log = read_tuning_log(results_dir, experiment)
        roles = tuning_roles(log) if log else {}
        for run in load_experiment(results_dir, experiment):
            runs.append(run)
            rows.append(run_row(run, roles))
    table = pd.DataFrame.from_records(rows)
    metric_frames = [metric_rows(run) for run in runs if not run.metrics.empty]
    metrics = (
        pd.concat(metric_frames, ignore_index=True)
        if metric_frames
        else pd.DataFrame(columns=["experiment", "run", "identity", "event", "step"])
    )
    # A column that mixes numbers and text (a config key that is a number in one run, a string in another) is text.
    for frame in (table, metrics):
        for column in [name for name, dtype in frame.dtypes.items() if pd.api.types.is_object_dtype(dtype)]:
            kinds = {type(value) for value in frame[column] if not _missing(value)}
            if len(kinds) > 1:
                frame[column] = frame[column].map(lambda value: None if _missing(value) else str(value))
    return table, metrics


def check_out_dir(out_dir: Path, results_dir: Path) -> None:
    """The folder is new, empty, or one an export wrote and nobody added to; and it is not in the run store."""
    try:
        problem = run_store_error(out_dir, results_dir)
        if problem:
            raise OutputFolderError(problem)
        owned_files(out_dir, MARKER, "export")
    except OutputFolderError as error:
        raise ReportError(str(error)) from None


def export_store(results_dir: Path, out_dir: Path, experiments: Iterable[str] | None = None) -> tuple[int, int]:
    """Write runs.parquet and metrics.parquet; returns (runs, metric records). Each file is replaced atomically."""
    check_out_dir(out_dir, results_dir)
    table, metrics = _frames(results_dir, experiments or experiments_in(results_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_owner_marker(out_dir, MARKER, "scripts/export.py", OUTPUTS)
    for name, frame in zip(OUTPUTS, (table, metrics)):
        handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=out_dir)
        os.close(handle)
        try:
            frame.to_parquet(temporary, index=False)
            os.replace(temporary, out_dir / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return len(table), len(metrics)
