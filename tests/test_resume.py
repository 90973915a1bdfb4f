"""A run killed (SIGKILL) or stopped and resumed logs and ends exactly like one that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from soapbench.results import RunStore
from soapbench.tracking import WandbTracker
from soapbench.trainer import TIMING_KEYS
from tests.conftest import FAST, REPO, train_in_process

# Dropout on, so the resumed run must also restore the RNG exactly.
ARGS = [
    *FAST,
    "trainer.max_steps=60",
    "trainer.log_interval=3",  # the step-20 checkpoint falls inside a log window, whose sums must survive the kill
    "trainer.eval_interval=10",
    "trainer.checkpoint_interval=10",
    "model.dropout=0.1",
    "optimizer.lr=3e-3",
]


def _command(results_dir):
    return [sys.executable, str(REPO / "scripts" / "train.py"), *ARGS, f"paths.results_dir={results_dir}"]


def _run_dir(results_dir):
    found = list((results_dir / "runs").glob("*/*"))
    return found[0] if found else None


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_command(reference_dir), check=True, capture_output=True, env=env, timeout=600)

    process = subprocess.Popen(_command(killed_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and process.poll() is None:
        run_dir = _run_dir(killed_dir)
        if run_dir is not None and (run_dir / "checkpoint.pt").exists():
            steps = [r["step"] for r in RunStore(run_dir).read_metrics()]
            # Past the step-20 checkpoint with records logged after it, which the resume must drop.
            if steps and steps[-1] >= 24:
                os.kill(process.pid, signal.SIGKILL)
                killed_at = steps[-1]
                break
        time.sleep(0.02)
    process.wait()
    assert killed_at is not None and killed_at < 60, "the run must be killed mid-way"
    run_dir = _run_dir(killed_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running", (
        "a killed run leaves readable files"
    )

    resumed = subprocess.run(_command(killed_dir), capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stdout

    reference_run = _run_dir(reference_dir)
    assert run_dir.name == reference_run.name
    reference_state = torch.load(reference_run / "checkpoint.pt", weights_only=False)
    resumed_state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    for name, value in reference_state["model"].items():
        assert torch.equal(value, resumed_state["model"][name]), name
    assert _comparable(RunStore(run_dir).read_metrics()) == _comparable(RunStore(reference_run).read_metrics())
    assert (
        json.loads((run_dir / "summary.json").read_text())["final_val_loss"]
        == json.loads((reference_run / "summary.json").read_text())["final_val_loss"]
    )


def _built_in_optimizers() -> list[str]:
    from soapbench.optimizers import available_optimizers  # the suite's own (imported peers have their own tests)

    return sorted(set(available_optimizers()) & {p.stem for p in (REPO / "configs" / "optimizer").glob("*.yaml")})


OPTIMIZERS = _built_in_optimizers()
# Log windows of 3 steps; checkpoints at 5 and 7 fall inside windows (5 = 3 + 2, 7 = 6 + 1).
WINDOWED = ["trainer.max_steps=8", "trainer.log_interval=3", "trainer.eval_interval=4", "trainer.checkpoint_interval=5"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_logs_bit_identically_after_a_stop_or_a_kill_inside_a_log_window(
    tmp_path, optimizer, monkeypatch
) -> None:
    sent: dict[str, list] = {"reference": [], "stopped": []}
    arm = ["reference"]
    monkeypatch.setattr(WandbTracker, "_send", lambda self, records: sent[arm[0]].extend(records))
    args = [f"optimizer={optimizer}", *WINDOWED]
    train_in_process(args, tmp_path / "reference")
    (reference,) = (tmp_path / "reference" / "runs").glob("*/*")

    # SIGTERM-like: stop at step 5 (checkpointed there), then the plain re-run.
    arm[0] = "stopped"
    assert train_in_process([*args, "trainer.stop_after_steps=5"], tmp_path / "stopped")["status"] == "running"
    train_in_process(args, tmp_path / "stopped")
    (stopped,) = (tmp_path / "stopped" / "runs").glob("*/*")
    assert _comparable(RunStore(stopped).read_metrics()) == _comparable(RunStore(reference).read_metrics())
    assert _comparable(sent["stopped"]) == _comparable(sent["reference"]), "W&B receives the same values"

    # SIGKILL-like: the files a kill after step 7 leaves (latest checkpoint at 5, records logged past it).
    train_in_process([*args, "trainer.stop_after_steps=7"], tmp_path / "killed")
    (killed,) = (tmp_path / "killed" / "runs").glob("*/*")
    (killed / "checkpoint.prev.pt").replace(killed / "checkpoint.pt")
    summary = json.loads((killed / "summary.json").read_text())
    (killed / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    assert RunStore(killed).read_metrics()[-1]["step"] > 5
    train_in_process(args, tmp_path / "killed")
    assert _comparable(RunStore(killed).read_metrics()) == _comparable(RunStore(reference).read_metrics())
