"""The GPU path on CPU: the prepared device check in its --tiny mode, torch.compile, and bf16 autocast on every workload.

A GPU is lent only now and then; these keep every piece of the GPU path exercised in CI, so the check that runs
when one appears has not rotted: the same script (tiny models), the compiled model (same numbers as eager), and
bf16 autocast for each architecture the trainer knows.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from soapbench.bench.device import compiler_available
from soapbench.results import RunStore
from tests.conftest import FAST, REPO, layer_output_dtypes, resolved

LM_TINY = ["model=lm_tiny", "model.n_layers=2", "model.vocab_size=128", "model.embedding_size=128",
           "model.seq_len=32"]  # fmt: skip
NANOGPT_TINY = [item for item in FAST if item.startswith("model")]
RUN = ["trainer.batch_size=4", "trainer.max_steps=4", "trainer.eval_interval=4", "trainer.eval_batches=2",
       "trainer.final_eval_batches=2", "trainer.threads=1",
       "trainer.log_interval=1", "trainer.checkpoint_interval=100", "trainer.keep_final_checkpoint=false",
       "trainer.schedule.warmup_steps=1", "logger.wandb.mode=disabled"]  # fmt: skip
# One per architecture the trainer knows (gpt, olmo, colorization), shrunk to seconds.
WORKLOADS = {
    "nanogpt_char": NANOGPT_TINY,
    "lm_tiny": LM_TINY,
    "colorization": ["model=colorization", "data=colorization_cpu", "data.max_train_images=16",
                     "data.max_val_images=4", "data.preview_images=2", "trainer.max_epochs=null"],
}  # fmt: skip


def _train(results_dir, overrides: list[str]) -> tuple[dict, list[dict]]:
    from soapbench.trainer import train

    summary = train(resolved([*overrides, *RUN, f"paths.results_dir={results_dir}"]))
    assert summary["status"] == "completed", summary.get("error")
    return summary, RunStore(Path(summary["run_dir"])).read_metrics()


def test_device_check_tiny_mode_runs_every_section_and_writes_its_report(tmp_path) -> None:
    process = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "device_check.py"), "--tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    lines = process.stdout.splitlines()
    assert [next(line for line in lines if line.startswith(f"{name}:")) for name in ("lm_step", "nanogpt", "refresh")]
    [json_path] = tmp_path.glob("lm_tiny_cpu_*_device-check.json")
    assert json_path.with_suffix(".md").read_text().startswith("# Device check: lm_tiny on cpu")
    report = json.loads(json_path.read_text())
    assert report["plan"]["compile"] == (compiler_available() is not None)
    assert report["plan"]["precision"] == "bf16"

    lm_rows = {row["optimizer"]: row for row in report["sections"]["lm_step"]["rows"]}
    assert list(lm_rows) == ["adamw", "soap", "shampoo", "soap_muon", "kl_soap"]  # required, then optional
    for name, row in lm_rows.items():
        assert row["status"] == "completed" and row["error"] is None, (name, row["error"])
        assert row["steps_measured"] == row["window"] >= 4, name  # whole refresh periods, after the warm-up
        assert row["step_seconds"] > row["optimizer_seconds"] > 0 and row["peak_memory_bytes"] > 0, name
        assert row["step_ratio_to_adamw"] == pytest.approx(row["step_seconds"] / lm_rows["adamw"]["step_seconds"])
    assert lm_rows["soap"]["window"] == 10 and lm_rows["adamw"]["step_ratio_to_adamw"] == 1.0

    for row in report["sections"]["nanogpt"]["rows"]:
        assert row["status"] == "completed" and row["trains"], row  # the loss fell by >= 10%
        assert row["final_val_loss"] < 0.9 * row["initial_loss"]

    refresh = report["sections"]["refresh"]["rows"]
    assert [row["size"] for row in refresh] == [512, 384]  # lm_tiny's MLP and fused-QKV factors, largest first
    assert all(row["qr_refresh_seconds"] > 0 and row["batched_qr_refresh_seconds"] > 0 for row in refresh)


def test_device_check_rejects_an_unknown_section_before_running(tmp_path) -> None:
    process = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "device_check.py"), "--tiny", "--sections", "lm_step,bogus",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert process.returncode == 2
    assert "error: --sections: unknown bogus" in process.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(compiler_available() is None, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("workload", ["nanogpt_char", "lm_tiny"])
def test_compiled_model_trains_like_the_eager_one(results_dir, tmp_path, workload) -> None:
    eager, eager_records = _train(results_dir, WORKLOADS[workload])
    compiled, compiled_records = _train(tmp_path, [*WORKLOADS[workload], "trainer.compile=true"])
    losses = [
        [r["train/loss"] for r in records if r["event"] == "train"] for records in (eager_records, compiled_records)
    ]
    # Inductor fuses and reorders float32 ops, so the trajectories agree to rounding, not bit for bit.
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert compiled["final_val_loss"] == pytest.approx(eager["final_val_loss"], rel=1e-4)
    assert compiled["final_val_loss"] < compiled["initial_loss"]


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_bf16_autocast_trains_every_workload(results_dir, tmp_path, monkeypatch, workload) -> None:
    monkeypatch.setenv("SOAPBENCH_CACHE", str(tmp_path / "cache"))
    with layer_output_dtypes() as dtypes:
        summary, records = _train(results_dir, [*WORKLOADS[workload], "trainer.precision=bf16", "optimizer.lr=3e-3"])
    assert dtypes == {torch.bfloat16}, "every Linear and convolution of the training step ran under bf16 autocast"
    losses = [r["train/loss"] for r in records if r["event"] == "train"]
    assert all(math.isfinite(loss) for loss in losses) and math.isfinite(summary["final_val_loss"])
    assert losses[-1] < losses[0], losses
