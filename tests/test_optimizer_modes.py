"""Optimizers with train/eval modes (Schedule-Free and kin) are evaluated at their evaluation weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from soapbench.optimizer_check.probes import check_modes
from soapbench.optimizers import build_optimizer
from soapbench.optimizers.modes import evaluation_weights, has_modes
from tests.conftest import train_in_process

pytestmark = pytest.mark.usefixtures("one_thread")


class ZeroAtEval(torch.optim.SGD):
    """SGD whose evaluation weights are all zero: a model evaluated at them predicts uniformly."""

    def eval(self):
        self._training = [p.detach().clone() for g in self.param_groups for p in g["params"]]
        for group in self.param_groups:
            for p in group["params"]:
                p.data.zero_()

    def train(self):
        saved = getattr(self, "_training", None)
        if saved is not None:
            for p, kept in zip((p for g in self.param_groups for p in g["params"]), saved):
                p.data.copy_(kept)
            self._training = None


class ForgetsTrainingWeights(ZeroAtEval):
    def train(self):
        self._training = None  # leaves the evaluation weights in place: training would go on from them


def test_the_trainer_evaluates_at_the_optimizers_evaluation_weights(results_dir: Path) -> None:
    summary = train_in_process(
        ["optimizer=custom", f"optimizer.target={__name__}.ZeroAtEval", "+optimizer.lr=0.5", "trainer.max_steps=6"],
        results_dir,
    )
    vocabulary = 65  # tiny Shakespeare's characters: zero weights give zero logits, a uniform prediction
    assert summary["final_val_loss"] == pytest.approx(math.log(vocabulary), abs=1e-5)
    assert summary["final_full_val_loss"] == pytest.approx(math.log(vocabulary), abs=1e-5)
    # between evaluations it trained at its own weights: the training loss fell below the uniform one
    records = [
        line for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines() if "train/loss" in line
    ]
    assert records and "train/loss" in records[-1]
    import json

    assert json.loads(records[-1])["train/loss"] < math.log(vocabulary) - 0.1


def test_check_optimizer_has_a_row_that_fails_when_train_does_not_restore() -> None:
    ok = check_modes(ZeroAtEval, {"lr": 0.1}, matrices_only=False)
    assert ok[0] == "pass" and "the trainer evaluates at them" in ok[1]
    broken = check_modes(ForgetsTrainingWeights, {"lr": 0.1}, matrices_only=False)
    assert broken == ("fail", broken[1]) and "did not restore the training weights" in broken[1]
    assert check_modes(torch.optim.AdamW, {"lr": 0.1}, matrices_only=False) == ("skip", "no train()/eval() modes")


def test_a_composite_switches_the_children_that_have_modes() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    composite = build_optimizer("muon", model, lr=0.02, companion={"target": f"{__name__}.ZeroAtEval", "lr": 0.1})
    assert has_modes(composite)
    bias = model[0].bias.detach().clone()
    with evaluation_weights(model, composite):
        assert not model.training and torch.count_nonzero(model[0].bias) == 0  # the companion's vector: zeroed
        assert torch.count_nonzero(model[0].weight) > 0  # Muon's matrix: no modes, untouched
    assert model.training and torch.equal(model[0].bias, bias)


def test_schedule_free_adamw_evaluates_at_x() -> None:
    schedulefree = pytest.importorskip("schedulefree", reason="the peers extra (schedulefree) is not installed")
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    optimizer = schedulefree.AdamWScheduleFree(params, lr=0.1, warmup_steps=0)
    optimizer.train()
    for _ in range(5):
        params[0].grad = torch.randn(4, 3)
        optimizer.step()
    y, z = params[0].detach().clone(), optimizer.state[params[0]]["z"]
    beta1 = optimizer.param_groups[0]["betas"][0]
    with evaluation_weights(torch.nn.Module(), optimizer):
        x = params[0].detach().clone()
    torch.testing.assert_close(x, torch.lerp(y, z, 1 - 1 / beta1))  # Schedule-Free's x from y and z
    assert not torch.allclose(x, y) and check_modes(schedulefree.AdamWScheduleFree, {"lr": 0.1}, False)[0] == "pass"
