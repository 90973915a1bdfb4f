"""A run killed with SIGKILL and resumed ends exactly like one that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from soapbench.results import RunStore
from soapbench.trainer import TIMING_KEYS
from tests.conftest import FAST, REPO

# Dropout on, so the resumed run must also restore the RNG exactly.
ARGS = [
    *FAST,
    "trainer.max_steps=60",
    "trainer.log_interval=2",
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
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running", "a killed run leaves readable files"

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
    assert json.loads((run_dir / "summary.json").read_text())["final_val_loss"] == json.loads(
        (reference_run / "summary.json").read_text()
    )["final_val_loss"]
