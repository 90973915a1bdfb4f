"""The main job's ergonomics: 'run k of N' with an ETA, and tuning runs that leave no checkpoints behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from soapbench.tuning import Job, _progress
from tests.conftest import train_in_process


def test_progress_counts_against_the_plan_and_paces_the_eta_on_runs_trained_here(monkeypatch) -> None:
    started = time.monotonic() - 600  # ten minutes in
    # 4 trained here and 2 reused of a planned 12, 1 job at a time: 150 s a run, 6 left -> 15 min
    line = _progress({"ran": 4, "reused": 2, "failed": 0}, 12, 6, started, 1)
    assert line.startswith("run 6 of 12, ETA 0:15 h:min")
    # extensions add runs beyond the plan: the count grows with what is known to be left
    assert _progress({"ran": 4, "reused": 2, "failed": 0}, 12, 9, started, 1).startswith("run 6 of 15")
    assert _progress({"ran": 0, "reused": 3, "failed": 0}, 12, 9, started, 2) == "run 3 of 12"


def test_tuning_runs_drop_their_checkpoints_and_report_runs_keep_them() -> None:
    tune, report = Job("soap_f10", 3e-3, 0, "grid", 1.0), Job("soap_f10", 3e-3, 2, "seed", 1.0)
    assert "trainer.keep_final_checkpoint=false" in tune.overrides()
    assert not any("keep_final_checkpoint" in o for o in report.overrides())


@pytest.mark.usefixtures("one_thread")
def test_a_completed_run_without_keep_final_checkpoint_leaves_no_checkpoint(results_dir: Path) -> None:
    kept = Path(train_in_process(["optimizer=adamw"], results_dir)["run_dir"])
    assert (kept / "checkpoint.pt").exists()
    dropped = Path(
        train_in_process(["optimizer=adamw", "trainer.keep_final_checkpoint=false", "seed=1"], results_dir)["run_dir"]
    )
    assert not list(dropped.glob("checkpoint*.pt")) and (dropped / "summary.json").exists()
