"""What a run reports, composed in one place: its metrics records, its summary and its failures.

Every metrics record carries the run's counters (step, train_seconds, tokens, samples) beside its own fields;
the summary holds the run's description (``meta``: names, identity, devices, versions), its status, the
headline numbers of its :class:`~soapbench.checkpoint.RunState`, the machine-load verdict, and the failures
of every attempt. The files are written by :class:`~soapbench.results.RunStore` (atomic summaries, append-only
metrics). The report's test fixtures write their run stores through the same functions, so the two cannot drift.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from soapbench.checkpoint import RunState
from soapbench.results import RunStore, utc_now


def metrics_counters(state: RunState) -> dict[str, Any]:
    """The fields every metrics record carries: where in the run it was logged."""
    return {"step": state.step, "train_seconds": state.train_seconds, "tokens": state.tokens, "samples": state.samples}


def summary_numbers(state: RunState, unit: str) -> dict[str, Any]:
    """The summary's headline numbers; ``tokens`` only for a workload counted in tokens."""
    return {
        "steps": state.step, "train_seconds": state.train_seconds, "optimizer_seconds": state.optimizer_seconds,
        "tokens": state.tokens if unit == "tokens" else None, "samples": state.samples,
        "final_val_loss": state.final_val_loss, "best_val_loss": state.best_val_loss,
        "final_val_metrics": state.final_val_metrics, "initial_loss": state.initial_loss,
        "final_full_val_loss": state.final_full_val_loss, "final_full_val_metrics": state.final_full_val_metrics,
        "final_full_eval_seconds": state.final_full_eval_seconds,
    }  # fmt: skip


class RunRecord:
    """One process's view of its run's record; only the writer (rank 0) touches the files and the tracker.

    ``failures`` and ``metrics_gaps`` start with those of earlier attempts (the previous summary's) and grow;
    ``tracker`` (a ``soapbench.tracking.WandbTracker``) is set once it exists, since its config holds ``meta``.
    """

    def __init__(
        self, store: RunStore, state: RunState, *, meta: dict[str, Any], machine: Any, unit: str,
        failures: list[dict[str, Any]], metrics_gaps: list[dict[str, Any]], writes: bool,
    ) -> None:  # fmt: skip
        self.store = store
        self.state = state
        self.meta = meta
        self.machine = machine
        self.unit = unit
        self.failures = failures
        self.metrics_gaps = metrics_gaps
        self.writes = writes
        self.tracker: Any = None

    def summary(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.meta, "status": status, **summary_numbers(self.state, self.unit), **self.machine.summary(),
            "started_at": self.state.started_at, "updated_at": utc_now(), "diverged_step": None, "error": None,
            "failures": self.failures, "last_failure": self.failures[-1] if self.failures else None,
            "metrics_gaps": self.metrics_gaps, **extra,
        }  # fmt: skip

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if self.writes:
            self.store.write_summary(summary)

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one record to metrics.jsonl and the tracker; every rank counts it (rank 0's count is checkpointed)."""
        record = {**metrics_counters(self.state), **record}
        if self.writes:
            self.store.append_metrics(record)
            self.tracker.log(record)
        self.state.metric_records += 1

    def add_failure(self, status: str, error: str) -> None:
        self.failures.append({"status": status, "error": error, "step": self.state.step, "at": utc_now()})

    def fail(self, status: str, error: str, traceback_text: str) -> None:
        """Record an attempt ended by an exception, as far as the disk and the tracker still allow."""
        self.add_failure(status, error)
        failure = self.summary(status, error=error, traceback=traceback_text)
        with contextlib.suppress(Exception):  # the disk that failed the run may refuse the summary too
            self.write_summary(failure)
        with contextlib.suppress(Exception):
            self.tracker.finish(failure, exit_code=1, commit=status == "failed")


__all__ = ["RunRecord", "metrics_counters", "summary_numbers"]
