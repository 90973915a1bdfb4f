"""summary.json records which optimizer, with which hyperparameters, trained each parameter; a matrix the main
optimizer should train but another one holds is named in one warning line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from soapbench.optimizers import build_optimizer
from soapbench.optimizers.composite import CompositeOptimizer
from soapbench.parameter_map import misplaced, parameter_map
from tests.conftest import train_in_process

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_muon_run_records_who_trains_every_parameter(results_dir: Path) -> None:
    summary = train_in_process(["optimizer=muon", "optimizer.lr=0.02", "trainer.max_steps=2"], results_dir)
    stored = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
    records = {r["name"]: r for r in stored["parameters"]}
    assert len(records) == len(stored["parameters"])  # each parameter once
    matrices = [r for r in records.values() if r["role"] == "matrix"]
    assert matrices and all(r["optimizer"] == "muon" and r["class"] == "Muon" for r in matrices)
    others = [r for r in records.values() if r["role"] != "matrix"]
    assert others and all(r["optimizer"] == "companion_adamw" and r["class"] == "AdamW" for r in others)
    assert all(r["hyperparameters"]["lr"] == 0.02 for r in matrices)  # the configured lr, not a warmup-scaled one
    assert {r["role"] for r in others} >= {"embedding", "vector"}
    assert all(isinstance(r["shape"], list) for r in records.values())
    assert sum(torch.Size(r["shape"]).numel() for r in records.values()) == stored["params"]


class _TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)


def test_a_matrix_held_by_the_companion_or_by_no_optimizer_is_named() -> None:
    model = _TwoLayer()
    good = build_optimizer("muon", model, lr=0.02)
    assert misplaced(parameter_map(model, good, "muon"), "muon", ["matrix"]) is None
    # what an FSDP wrapper did to Muon in the audit: a matrix silently given to the AdamW companion
    muon = build_optimizer("muon", [model.first.weight], lr=0.02)
    adamw = torch.optim.AdamW([model.second.weight, model.first.bias], lr=1e-3)
    composite = CompositeOptimizer({"muon": muon, "companion_adamw": adamw})
    line = misplaced(parameter_map(model, composite, "muon"), "muon", ["matrix"])
    assert line.startswith(
        "warning: 1 parameter(s) with a role muon trains went to another optimizer: "
        "second.weight (matrix, to companion_adamw)"
    )
    assert "1 trainable parameter(s) are held by no optimizer: second.bias" in line
    assert "\n" not in line
