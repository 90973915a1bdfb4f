"""Final numbers on the whole validation split: every window scored once, equal to a hand computation,
logged as ``val_full/*`` after the last step only, and kept apart from the fixed set's curve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from soapbench.data.tokens import TokenSplits
from soapbench.results import RunStore
from soapbench.workloads.language_model import LanguageModelWorkload
from tests.conftest import train_in_process

SEQ_LEN, BATCH, VOCAB = 5, 3, 7


class Bigram(nn.Module):
    """A tiny LM whose logits depend on the current token only: cheap to re-run window by window."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(VOCAB, VOCAB)
        self.seen: list[torch.Tensor] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.seen.append(inputs.clone())
        return self.table(inputs)


def _workload(val_tokens: int) -> LanguageModelWorkload:
    rng = np.random.default_rng(1)
    splits = TokenSplits(train=rng.integers(0, VOCAB, 200), val=rng.integers(0, VOCAB, val_tokens), vocab_size=VOCAB)
    return LanguageModelWorkload(
        Bigram(), splits, seq_len=SEQ_LEN, batch_size=BATCH, eval_batches=2, seed=0, device=torch.device("cpu")
    )


@pytest.mark.parametrize("val_tokens", [51, 52, 55])  # the last window ends exactly, or tokens are left over
def test_every_validation_window_is_scored_exactly_once(val_tokens: int) -> None:
    workload = _workload(val_tokens)
    model = workload.model
    with torch.no_grad():
        workload.evaluate_full(model)
    windows = (val_tokens - 1) // SEQ_LEN
    assert sum(len(batch) for batch in model.seen) == windows
    assert all(len(batch) <= BATCH for batch in model.seen)
    seen_inputs = torch.cat(model.seen)
    expected = torch.as_tensor(workload.splits.val[: windows * SEQ_LEN]).view(windows, SEQ_LEN)
    assert torch.equal(seen_inputs, expected), "consecutive non-overlapping windows, in order"


def test_whole_split_loss_equals_a_hand_computation() -> None:
    workload = _workload(55)
    val = torch.as_tensor(workload.splits.val)
    # By hand: the mean over every target token of -log softmax(table[current token])[next token].
    inputs, targets = val[: 10 * SEQ_LEN], val[1 : 10 * SEQ_LEN + 1]
    log_probs = torch.log_softmax(workload.model.table.weight.detach().double(), dim=-1)
    expected = -log_probs[inputs, targets].mean().item()
    with torch.no_grad():
        metrics = workload.evaluate_full(workload.model)
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["val_perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)


def test_a_batch_budget_spreads_its_windows_over_the_split() -> None:
    workload = _workload(301)  # 60 windows
    starts = workload.full_split_starts(max_batches=2)
    assert len(starts) == 2 * BATCH and starts[0] == 0 and starts[-1] == 59 * SEQ_LEN
    assert len(set(starts.tolist())) == len(starts) and all(s % SEQ_LEN == 0 for s in starts)
    assert len(workload.full_split_starts(max_batches=100)) == 60, "a budget above the split is the whole split"


def test_the_final_evaluation_runs_once_after_the_last_step_and_fills_the_summary(results_dir) -> None:
    stopped = train_in_process(["trainer.stop_after_steps=5"], results_dir)
    assert stopped["final_full_val_loss"] is None, "no whole-split evaluation before the last step"
    summary = train_in_process([], results_dir)  # resumes: FAST scores 2 batches of the split
    records = RunStore(summary["run_dir"]).read_metrics()
    full = [r for r in records if any(k.startswith("val_full/") for k in r)]
    assert len(full) == 1 and full[0]["event"] == "eval" and full[0]["step"] == 12
    assert set(full[0]) >= {"val_full/loss", "val_full/perplexity"} and "val/loss" not in full[0]
    assert summary["final_full_val_loss"] == full[0]["val_full/loss"]
    assert summary["final_full_val_metrics"] == {k: v for k, v in full[0].items() if k.startswith("val_full/")}
    fixed = [r for r in records if "val/loss" in r]
    assert summary["final_val_loss"] == fixed[-1]["val/loss"] != summary["final_full_val_loss"]
    assert summary["final_full_eval_seconds"] > 0
    assert full[0]["train_seconds"] == summary["train_seconds"], "the evaluation is not training time"
