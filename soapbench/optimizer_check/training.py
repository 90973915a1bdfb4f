"""check-optimizer's runs through the real trainer: a short nanogpt_char_cpu run beside AdamW, and a run stopped
halfway and resumed from its checkpoint, which must end bit-identical to the same run uninterrupted."""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from soapbench.checkpoint import load_checkpoint
from soapbench.contract.problem import assert_identical

# A tiny nanoGPT for the resume check: what matters is that every byte of the state survives, not the loss.
TINY = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.seq_len=32", "trainer.batch_size=4",
        "trainer.eval_batches=2", "trainer.final_eval_batches=2"]  # fmt: skip
RESUME_STEPS = 12


def train_overrides(overrides: list[str], results_dir: Path) -> dict[str, Any]:
    """Compose ``scripts/train.py``'s config with ``overrides`` and train it in this process; return its summary."""
    from soapbench.composition import compose_resolved
    from soapbench.trainer import train

    # One thread: small eigh/QR calls slow down by orders of magnitude when threads compete for busy cores.
    common = ["model=nanogpt_char_cpu", "seed=0", "logger.wandb.mode=disabled", "experiment_name=check_optimizer",
              "trainer.threads=1", f"paths.results_dir={results_dir}"]  # fmt: skip
    config = compose_resolved([*common, *overrides])
    with contextlib.redirect_stdout(sys.stderr):  # the runs' progress lines, not the table, go to stderr
        return train(config)


def _eval_losses(summary: dict[str, Any]) -> list[float]:
    from soapbench.results import RunStore

    return [
        r["val/loss"]
        for r in RunStore(summary["run_dir"]).read_metrics()
        if r.get("event") == "eval" and "val/loss" in r
    ]


def check_training(target_overrides: list[str], steps: int) -> tuple[str, str]:
    """``steps`` steps of nanogpt_char_cpu (nanoGPT's CPU recipe, shortened) for the target and for AdamW (its yaml)."""
    budget = [f"trainer.max_steps={steps}", f"trainer.eval_interval={max(1, steps // 2)}",
              f"trainer.checkpoint_interval={steps}", f"trainer.schedule.warmup_steps={max(1, steps // 10)}",
              "trainer.final_eval_batches=40"]  # the curve's eval set, not the whole split: a quick check  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="check_optimizer_") as scratch:
        ours = train_overrides([*target_overrides, *budget], Path(scratch))
        adamw = train_overrides(["optimizer=adamw", *budget], Path(scratch))
        losses, reference = _eval_losses(ours), _eval_losses(adamw)
    if ours["status"] != "completed" or not losses or not math.isfinite(losses[-1]):
        return "fail", f"{ours['status']} (AdamW: {reference[-1]:.3f}); {ours.get('error') or ''}".strip("; ")
    detail = (f"val loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps, {ours['train_seconds']:.1f} s "
              f"(AdamW -> {reference[-1]:.3f}, {adamw['train_seconds']:.1f} s)")  # fmt: skip
    if not losses[-1] < losses[0] - 0.05:
        return "fail", "the loss did not fall: " + detail
    return "pass", detail


def check_resume(target_overrides: list[str]) -> tuple[str, str]:
    """Stopped after half its steps and resumed by the same command, a run ends with the same weights, optimizer state
    and validation loss as the run never stopped (checkpoint every few steps, refreshes in between)."""
    budget = [*TINY, f"trainer.max_steps={RESUME_STEPS}", f"trainer.eval_interval={RESUME_STEPS // 2}",
              "trainer.checkpoint_interval=3", "trainer.schedule.warmup_steps=2"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="check_optimizer_") as scratch:
        whole = train_overrides([*target_overrides, *budget], Path(scratch) / "whole")
        train_overrides(
            [*target_overrides, *budget, f"trainer.stop_after_steps={RESUME_STEPS // 2}"], Path(scratch) / "split"
        )
        resumed = train_overrides([*target_overrides, *budget], Path(scratch) / "split")
        if whole["status"] != "completed" or resumed["status"] != "completed":
            return (
                "fail",
                f"runs ended {whole['status']} / {resumed['status']}: {whole.get('error') or resumed.get('error')}",
            )
        a = load_checkpoint(Path(whole["run_dir"]) / "checkpoint.pt")
        b = load_checkpoint(Path(resumed["run_dir"]) / "checkpoint.pt")
    for part in ("model", "optimizer"):
        try:
            assert_identical(b[part], a[part], part)
        except AssertionError as difference:
            return (
                "fail",
                f"after a resume at step {RESUME_STEPS // 2}, {difference} (differs from the uninterrupted run)",
            )
    if whole["final_val_loss"] != resumed["final_val_loss"]:
        return "fail", f"final val loss {resumed['final_val_loss']} vs {whole['final_val_loss']} uninterrupted"
    return (
        "pass",
        f"stopped at step {RESUME_STEPS // 2} of {RESUME_STEPS}, resumed: weights, state and loss bit-identical",
    )
