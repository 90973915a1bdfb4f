"""The shared trainer: results store, timing fields, precision, EMA, divergence, failures."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from soapbench.results import RunStore
from tests.conftest import PRECISION_DTYPES, layer_output_dtypes, train_in_process

SUMMARY_KEYS = {"status", "final_val_loss", "best_val_loss", "steps", "train_seconds", "tokens", "params", "device"}


def _only_run(results_dir):
    (run_dir,) = list((results_dir / "runs").glob("*/*"))
    return run_dir


def test_run_writes_config_metrics_summary_and_checkpoint(results_dir) -> None:
    summary = train_in_process(["experiment_name=unit"], results_dir)
    run_dir = _only_run(results_dir)
    assert run_dir.parent.name == "unit"
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"}
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(on_disk)
    assert on_disk["status"] == "completed" and summary["status"] == "completed"
    assert on_disk["steps"] == 12
    assert on_disk["tokens"] == 12 * 4 * 32
    assert sum(on_disk["params_by_optimizer"].values()) == on_disk["params"]  # the report's confound check reads it
    records = RunStore(run_dir).read_metrics()
    assert all({"step", "train_seconds", "tokens", "samples"} <= set(r) for r in records)
    evals = [r for r in records if "val/loss" in r]  # the fixed set; the whole split is val_full/*
    assert [r["step"] for r in evals] == [0, 6, 12]
    assert on_disk["final_val_loss"] == evals[-1]["val/loss"]
    assert on_disk["best_val_loss"] == min(r["val/loss"] for r in evals)
    assert evals[-1]["val/loss"] < evals[0]["val/loss"], "a dozen AdamW steps lower the validation loss"


def test_timing_fields_are_consistent_and_exclude_evaluation(results_dir, monkeypatch) -> None:
    from soapbench.workloads.language_model import LanguageModelWorkload

    original, original_full = LanguageModelWorkload.evaluate, LanguageModelWorkload.evaluate_full

    def slow_evaluate(self, model):
        time.sleep(0.4)
        return original(self, model)

    def slow_evaluate_full(self, model, max_batches=None):
        time.sleep(0.4)
        return original_full(self, model, max_batches)

    monkeypatch.setattr(LanguageModelWorkload, "evaluate", slow_evaluate)
    monkeypatch.setattr(LanguageModelWorkload, "evaluate_full", slow_evaluate_full)
    started = time.perf_counter()
    summary = train_in_process([], results_dir)
    elapsed = time.perf_counter() - started
    records = RunStore(_only_run(results_dir)).read_metrics()
    train_records = [r for r in records if r["event"] == "train"]
    assert len(train_records) == 12 // 3, "one record per log interval"
    # 3 evaluations on the fixed set and 1 on the whole split sleep 1.6 s in all; none of it is training time.
    assert summary["train_seconds"] < elapsed - 1.6
    assert summary["final_full_eval_seconds"] >= 0.4
    assert 0 < summary["optimizer_seconds"] < summary["train_seconds"]
    assert all(r["train/step_seconds"] > 0 and r["train/throughput"] > 0 for r in train_records)
    assert all(0 < r["train/optimizer_seconds"] < r["train/step_seconds"] for r in train_records)
    assert all(r["memory/peak_bytes"] > 0 for r in train_records)
    clock = [r["train_seconds"] for r in records]
    assert clock == sorted(clock), "the training clock never runs backwards"


def test_same_seed_gives_every_optimizer_the_same_batches_and_initial_weights() -> None:
    from soapbench.config import load_trainer_config
    from soapbench.workloads import build_workload
    from tests.conftest import FAST, resolved

    workloads = []
    for optimizer in ("adamw", "adamw"):
        cfg = resolved([*FAST, f"optimizer={optimizer}"])
        workloads.append(build_workload(cfg, load_trainer_config(cfg["trainer"]), torch.device("cpu")))
    a, b = workloads
    for step, micro in ((0, 0), (5, 0), (5, 1)):
        assert torch.equal(a.train_batch(step, micro)[0], b.train_batch(step, micro)[0])
    assert not torch.equal(a.train_batch(0, 0)[0], a.train_batch(1, 0)[0])
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert (a.val_starts == b.val_starts).all()


def test_gradient_accumulation_counts_items_and_steps(results_dir) -> None:
    summary = train_in_process(
        ["trainer.grad_accum_steps=3", "trainer.max_steps=4", "trainer.eval_interval=2"], results_dir
    )
    assert summary["steps"] == 4
    assert summary["tokens"] == 4 * 3 * 4 * 32
    assert summary["samples"] == 4 * 3 * 4


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_runs_the_step_in_its_dtype_on_cpu(results_dir, monkeypatch, precision) -> None:
    """bf16 and fp16 autocast the step's matmuls (fp16 also loss-scales through an enabled GradScaler); fp32 runs
    them in float32 with the scaler off."""
    import soapbench.trainer

    scalers = []
    original = soapbench.trainer.build_grad_scaler

    def kept_scaler(*args):
        scalers.append(original(*args))
        return scalers[-1]

    monkeypatch.setattr(soapbench.trainer, "build_grad_scaler", kept_scaler)
    with layer_output_dtypes() as dtypes:
        summary = train_in_process([f"trainer.precision={precision}", "trainer.max_steps=6"], results_dir)
    assert summary["status"] == "completed"
    assert math.isfinite(summary["final_val_loss"])
    assert dtypes == {getattr(torch, PRECISION_DTYPES[precision])}
    (scaler,) = scalers
    assert scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert "scale" in scaler.state_dict() and scaler.get_scale() > 1.0, "the losses went through the scaler"


def test_ema_is_evaluated_and_overwrite_copies_it_into_the_model(results_dir) -> None:
    train_in_process(
        ["trainer.ema.enabled=true", "trainer.ema.decay=0.5", "trainer.ema.overwrite_interval=6"], results_dir
    )
    run_dir = _only_run(results_dir)
    evals = [r for r in RunStore(run_dir).read_metrics() if "val/loss" in r]
    assert [r["step"] for r in evals] == [0, 6, 12] and all("val_ema/loss" in r for r in evals)
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    # Step 12 is an overwrite step: the model's weights are the EMA's.
    ema_weights = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items() if k.startswith("module.")}
    for name, value in checkpoint["model"].items():
        assert torch.equal(value, ema_weights[name]), name


def test_gradient_clipping_by_norm_and_by_value_reaches_the_optimizer_and_logs_the_norm(results_dir) -> None:
    """Every step the optimizer sees gradients within the global norm (0.5) and the elementwise bound (0.01); the log
    records the norm before clipping, which exceeds 0.5 at least once, so the clip had work to do."""
    seen = []

    def record(optimizer, args, kwargs) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append((torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item(),
                     max(g.abs().max().item() for g in grads)))  # fmt: skip

    handle = register_optimizer_step_pre_hook(record)
    try:
        train_in_process(["trainer.grad_clip_norm=0.5", "trainer.grad_clip_value=0.01"], results_dir)
    finally:
        handle.remove()
    assert len(seen) == 12, "one optimizer step per training step"
    assert all(norm <= 0.5 * (1 + 1e-5) and largest <= 0.01 for norm, largest in seen), seen
    records = [r for r in RunStore(_only_run(results_dir)).read_metrics() if r["event"] == "train"]
    assert records and all("train/grad_norm" in r for r in records)
    assert max(r["train/grad_norm"] for r in records) > 0.5, "the norm before clipping, not after"


def test_loss_above_the_divergence_factor_ends_the_run_as_diverged(results_dir) -> None:
    summary = train_in_process(
        ["optimizer.lr=10", "trainer.max_steps=40", "trainer.divergence_factor=1.5"], results_dir
    )
    assert summary["status"] == "diverged"
    assert 1 <= summary["diverged_step"] < 40
    on_disk = json.loads((_only_run(results_dir) / "summary.json").read_text())
    assert on_disk["status"] == "diverged" and on_disk["diverged_step"] == summary["diverged_step"]


def test_an_exception_is_recorded_as_failed_and_re_raised(results_dir, monkeypatch) -> None:
    from soapbench.workloads.language_model import LanguageModelWorkload

    def broken(self, step, micro_step):
        if step == 5:
            raise RuntimeError("disk on fire")
        return original(self, step, micro_step)

    original = LanguageModelWorkload.train_batch
    monkeypatch.setattr(LanguageModelWorkload, "train_batch", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train_in_process([], results_dir)
    summary = json.loads((_only_run(results_dir) / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "disk on fire" in summary["error"]
    assert summary["steps"] == 5


def test_finished_runs_are_skipped_and_stopped_runs_resume(results_dir) -> None:
    first = train_in_process(["trainer.stop_after_steps=5"], results_dir)
    assert first["status"] == "running" and first["steps"] == 5
    second = train_in_process([], results_dir)
    assert second["status"] == "completed" and second["steps"] == 12
    third = train_in_process([], results_dir)
    assert third["finished_at"] == second["finished_at"], "a completed run is not run again"


def test_resume_never_refuses_to_touch_an_existing_run(results_dir) -> None:
    from soapbench.errors import ConfigError

    train_in_process(["trainer.stop_after_steps=2"], results_dir)
    with pytest.raises(ConfigError, match="already exists"):
        train_in_process(["resume=never"], results_dir)
