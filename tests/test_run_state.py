"""The typed run state is stored as the plain dict checkpoints have always held, so old checkpoints still resume."""

from __future__ import annotations

from soapbench.checkpoint import LogWindow, RunState

# The checkpoint's "state" keys, in the order the trainer has always written them.
CHECKPOINT_STATE_KEYS = [
    "step", "train_seconds", "optimizer_seconds", "tokens", "samples", "metric_records", "initial_loss",
    "best_val_loss", "final_val_loss", "final_val_metrics", "final_full_val_loss", "final_full_val_metrics",
    "final_full_eval_seconds", "segments", "wandb_run_id", "started_at", "log_window",
]  # fmt: skip
LOG_WINDOW_KEYS = ["loss", "steps", "seconds", "optimizer_seconds", "items"]


def _midway() -> RunState:
    return RunState(
        step=7, train_seconds=1.25, optimizer_seconds=0.5, tokens=896, samples=28, metric_records=5, initial_loss=4.2,
        best_val_loss=3.1, final_val_loss=3.3, final_val_metrics={"val/loss": 3.3}, segments=[{"start_step": 0}],
        wandb_run_id="abc", started_at="2026-01-01T00:00:00+00:00",
        log_window=LogWindow(loss=6.5, steps=2, seconds=0.25, optimizer_seconds=0.125, items=256),
    )  # fmt: skip


def test_the_checkpoint_holds_the_plain_dict_older_versions_wrote_and_reads_back_the_same_state() -> None:
    saved = _midway().to_checkpoint()
    assert list(saved) == CHECKPOINT_STATE_KEYS
    assert saved["log_window"] == {"loss": 6.5, "steps": 2, "seconds": 0.25, "optimizer_seconds": 0.125, "items": 256}
    assert list(saved["log_window"]) == LOG_WINDOW_KEYS
    assert RunState.from_checkpoint(saved, RunState(started_at="now")) == _midway()


def test_a_key_an_older_checkpoint_lacks_keeps_its_default_and_one_this_version_dropped_is_ignored() -> None:
    saved = _midway().to_checkpoint()
    older = {key: value for key, value in saved.items() if key not in ("log_window", "final_full_eval_seconds")}
    older["retired_counter"] = 3
    older_window = {**saved["log_window"], "retired_sum": 1.0}
    restored = RunState.from_checkpoint(older, RunState(started_at="now", final_full_eval_seconds=9.0))
    assert restored.step == 7 and restored.log_window == LogWindow() and restored.final_full_eval_seconds == 9.0
    assert not hasattr(restored, "retired_counter")
    window_only = RunState.from_checkpoint({"log_window": older_window}, RunState())
    assert window_only.log_window == _midway().log_window
