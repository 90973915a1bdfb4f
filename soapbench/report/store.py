"""Load the local results store into memory, robustly, and group runs into configurations.

Store layout (written by the trainer, one directory per run)::

    <results>/runs/<experiment>/<run_name>/{config.yaml, metrics.jsonl, summary.json, images/step_*.png}

Every directory under ``runs/<experiment>/`` is a run, whatever state it is in. Nothing is
dropped: a run that cannot be used for a mean still appears in the status counts and in the
list of excluded runs. A run's *status* is

* ``completed`` / ``diverged`` / ``failed`` / ``running`` / ``interrupted``: as ``summary.json`` says, except that a
  ``completed`` run whose final validation loss is null, NaN or ±inf is reclassified as
  ``diverged`` (its loss is unusable, which is what divergence means for a comparison);
* ``no_summary``: ``config.yaml`` (and perhaps a partial ``metrics.jsonl``) but no summary: the
  run never started or was killed before its first summary write;
* ``unreadable``: no parsable ``config.yaml``: it cannot be attributed to a configuration.

A ``running`` summary is reported as such; the report cannot tell a live run from a killed one.

Swept hyperparameters and configurations. Each config is flattened to dotted keys
(``optimizer.lr``, ``trainer.schedule.warmup_steps``); lists become tuples so values are hashable.
Keys that do not change what is trained are ignored (seeds, paths, logger, hydra, W&B and run
bookkeeping; see ``IGNORED_SEGMENTS``). A *configuration* is the set of runs whose remaining flat
configs are equal, i.e. the same config up to the seed (runs on more than one process also carry
``world_size``, so they are never pooled with runs of another process count). A configuration's *family* also ignores the
budget keys (``trainer.max_steps`` and the schedule lengths that scale with it), so the shortened-
schedule runs of the SOAP efficiency method fall in the family of their full-budget configuration.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

STATUSES = ("completed", "diverged", "failed", "running", "interrupted", "no_summary", "unreadable")

# A key is ignored if any of its dotted segments is one of these (``seed``, ``data.seed``,
# ``paths.results_dir``, ``logger.wandb.project``, ``trainer.stop_after_steps``, ...): they do not
# change what is trained (stop_after_steps only splits a run across processes; eval_at_start only
# adds an eval at step 0; threads and parallel_jobs only set how many cores compute it).
IGNORED_SEGMENTS = frozenset(
    {
        "seed",
        "paths",
        "logger",
        "hydra",
        "wandb",
        "experiment_name",
        "run_name",
        "sweep_keys",
        "run_dir",
        "output_dir",
        "results_dir",
        "tags",
        "notes",
        "log_interval",
        "checkpoint_interval",
        "checkpoint_dir",
        "keep_final_checkpoint",
        "stop_after_steps",
        "threads",
        "parallel_jobs",
        "eval_at_start",
        "resume",
        "num_workers",
    }
)

# Keys under ``trainer`` whose last segment is one of these set the length of the run; runs that
# differ only in them (and the seed) are one schedule family for the efficiency fit.
BUDGET_SEGMENTS = frozenset(
    {
        "max_steps",
        "max_tokens",
        "max_epochs",
        "epochs",
        "warmup_steps",
        "decay_steps",
        "warmdown_steps",
        "cooldown_steps",
        "total_steps",
        "lr_decay_steps",
        "budget_fraction",
        "schedule_fraction",
        "eval_interval",
    }
)


class ReportError(Exception):
    """Bad input to the report (no experiment, empty store, bad reference file): a one-line message."""


@dataclass
class Run:
    """One run directory (or one W&B run), whatever state it is in."""

    source: str  # path of the run directory, or a W&B URL
    experiment: str
    name: str
    config: dict[str, Any]
    metrics: pd.DataFrame
    summary: dict[str, Any] | None
    status: str
    problems: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    config_sha256: str | None = None
    flat: dict[str, Hashable] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.flat:
            self.flat = flatten(self.config)
            # The process count is not in the identity (1 or N processes train the same batches), but reduction order
            # rounds their numbers apart: runs of different world sizes are separate configurations, never one mean.
            summary = self.summary or {}
            world_size = summary.get("world_size", summary.get("processes"))
            if isinstance(world_size, int) and world_size > 1:
                self.flat["world_size"] = world_size

    @property
    def optimizer(self) -> str:
        name = self.flat.get("optimizer.name") or (self.summary or {}).get("optimizer")
        return str(name) if name else "unknown"

    @property
    def seed(self) -> Any:
        return self.config.get("seed", (self.summary or {}).get("seed"))

    @property
    def workload(self) -> str:
        """Experiment plus model and data: the unit a target and a performance profile are defined on."""
        summary = self.summary or {}
        model = self.flat.get("model.name") or summary.get("model") or "?"
        data = self.flat.get("data.name") or summary.get("data") or "?"
        return f"{self.experiment}:{model}/{data}"

    @property
    def max_steps(self) -> int | None:
        value = self.flat.get("trainer.max_steps")
        if value is None and self.summary:
            value = self.summary.get("max_steps")
        return int(value) if value is not None else None

    @property
    def config_hash(self) -> str | None:
        return (self.summary or {}).get("config_hash")


def _freeze(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Hashable]:
    """Nested mapping -> {dotted key: hashable value}; lists become tuples."""
    flat: dict[str, Hashable] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = _freeze(value)
    return flat


def is_ignored(key: str, extra_ignored: Iterable[str] = ()) -> bool:
    segments = key.split(".")
    if any(s in IGNORED_SEGMENTS for s in segments):
        return True
    return any(key == p or key.startswith(p + ".") for p in extra_ignored)


def is_budget_key(key: str) -> bool:
    segments = key.split(".")
    return segments[0] == "trainer" and segments[-1] in BUDGET_SEGMENTS


def config_key(run: Run, extra_ignored: Iterable[str] = (), *, drop_budget: bool = False) -> tuple:
    """Identity of a run's configuration: its flat config minus ignored (and optionally budget) keys."""
    items = [
        (k, v)
        for k, v in run.flat.items()
        if not is_ignored(k, extra_ignored) and not (drop_budget and is_budget_key(k))
    ]
    return (run.workload, tuple(sorted(items, key=lambda kv: kv[0])))


def swept_keys(runs: Iterable[Run], extra_ignored: Iterable[str] = ()) -> list[str]:
    """Keys whose value differs between the given runs (a key missing from a run counts as None)."""
    runs = list(runs)
    keys = sorted({k for r in runs for k in r.flat if not is_ignored(k, extra_ignored)})
    return [k for k in keys if len({repr(r.flat.get(k)) for r in runs}) > 1]


# ---------------------------------------------------------------------------------------------
# Reading one run directory
# ---------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Parse metrics.jsonl line by line; a truncated or corrupt line is skipped and reported."""
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    if not path.exists():
        return pd.DataFrame(), ["no metrics.jsonl"]
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            # The trainer writes non-finite floats as "inf"/"nan" strings (JSON has none); other writers
            # may use NaN/Infinity literals, which json also accepts. Both become floats below.
            record = json.loads(line)
        except json.JSONDecodeError:
            where = "last line (truncated)" if number == len(lines) else f"line {number}"
            problems.append(f"metrics.jsonl: unparsable {where} skipped")
            continue
        if not isinstance(record, dict) or "step" not in record:
            problems.append(f"metrics.jsonl: line {number} is not a record with 'step'; skipped")
            continue
        if "event" not in record:
            record["event"] = "eval" if any(str(k).startswith("val/") for k in record) else "train"
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    for column in frame.columns:
        if column != "event":
            # null (how JSON writers spell NaN) and non-numeric junk become NaN
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame, problems


def _final_loss_unusable(summary: Mapping[str, Any]) -> bool:
    value = summary.get("final_val_loss")
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def load_run_dir(run_dir: Path, experiment: str) -> Run:
    problems: list[str] = []
    config: dict[str, Any] = {}
    sha: str | None = None
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        raw = config_path.read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        try:
            # The trainer stores the config resolved; an interpolation left in one (${oc.env:WANDB_API_KEY}) is
            # kept as text, so nothing from this machine's environment reaches a report.
            container = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
            config = container if isinstance(container, dict) else {}
            if not config:
                problems.append("config.yaml is empty or not a mapping")
        except Exception as err:  # noqa: BLE001 - any parse error makes the run unreadable, not the report
            problems.append(f"config.yaml unparsable: {type(err).__name__}")
    else:
        problems.append("no config.yaml")

    metrics, metric_problems = read_metrics(run_dir / "metrics.jsonl")
    problems += metric_problems

    summary: dict[str, Any] | None = None
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        try:
            loaded_summary = json.loads(summary_path.read_text(encoding="utf-8"))
            summary = loaded_summary if isinstance(loaded_summary, dict) else None
            if summary is None:
                problems.append("summary.json is not an object")
        except json.JSONDecodeError:
            problems.append("summary.json unparsable")

    if not config:
        status = "unreadable"
    elif summary is None:
        status = "no_summary"
    else:
        status = str(summary.get("status") or "no_summary")
        if status not in STATUSES:
            problems.append(f"unknown summary status {status!r}")
            status = "failed"
        if status == "completed" and _final_loss_unusable(summary):
            problems.append(f"summary says completed but final_val_loss is {summary.get('final_val_loss')}")
            status = "diverged"
    return Run(
        source=str(run_dir),
        experiment=experiment,
        name=run_dir.name,
        config=config,
        metrics=metrics,
        summary=summary,
        status=status,
        problems=problems,
        run_dir=run_dir,
        config_sha256=sha,
    )


def load_experiment(results_dir: Path, experiment: str) -> list[Run]:
    """All runs of one experiment; raises ReportError (one line) if there is nothing to load."""
    if not results_dir.is_dir():
        raise ReportError(f"results directory {results_dir} does not exist")
    runs_root = results_dir / "runs"
    if not runs_root.is_dir():
        raise ReportError(f"no run store at {runs_root} (empty store)")
    exp_dir = runs_root / experiment
    if not exp_dir.is_dir():
        known = sorted(p.name for p in runs_root.iterdir() if p.is_dir())
        hint = f"; known: {', '.join(known)}" if known else "; the store is empty"
        raise ReportError(f"no such experiment {experiment!r} under {runs_root}{hint}")
    runs = [load_run_dir(d, experiment) for d in sorted(exp_dir.iterdir()) if d.is_dir()]
    if not runs:
        raise ReportError(f"experiment {experiment!r} has no run directories under {exp_dir}")
    return one_per_identity(runs)


def identity_hash(run: Run) -> str | None:
    summary = run.summary or {}
    identity = summary.get("identity")
    return (identity.get("hash") if isinstance(identity, Mapping) else None) or summary.get("config_hash")


# Which copy of a run stands for it: a finished result over an unfinished one, then the one updated last.
_STATUS_RANK = {"completed": 0, "diverged": 1, "failed": 2, "interrupted": 3, "running": 4}


def one_per_identity(runs: list[Run]) -> list[Run]:
    """Runs with one identity hash (the same config on the same data) are one run: keep one copy, warn once per run.

    Copies come from stores written before run directories were found by identity, when a second sweep that
    named the same configuration differently trained it again; counting both would count one seed twice.
    """
    by_identity: dict[str, list[Run]] = {}
    for run in runs:
        key = identity_hash(run)
        if key is not None:
            by_identity.setdefault(key, []).append(run)
    dropped: set[int] = set()
    for key, copies in by_identity.items():
        if len(copies) < 2:
            continue
        ranked = sorted(
            copies, key=lambda r: (_STATUS_RANK.get(r.status, 9), str((r.summary or {}).get("updated_at", "")))
        )
        kept, others = ranked[0], ranked[1:]
        dropped.update(id(r) for r in others)
        kept.problems.append(f"duplicate copies of this run left out: {', '.join(r.source for r in others)}")
        print(
            f"warning: {kept.source} and {', '.join(r.source for r in others)} are one run (identity {key}); "
            f"counted once, as {kept.name}",
            file=sys.stderr,
            flush=True,
        )
    return [run for run in runs if id(run) not in dropped]


def status_counts(runs: Iterable[Run]) -> dict[str, int]:
    counts = {s: 0 for s in STATUSES}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return counts
