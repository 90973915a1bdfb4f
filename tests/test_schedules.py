"""Learning-rate schedules: shapes at their landmarks, every param group driven, state survives a reload."""

from __future__ import annotations

import pytest
import torch

from soapbench.config import ScheduleConfig
from soapbench.schedules import build_scheduler


def _lrs(schedule: ScheduleConfig, max_steps: int = 100, base_lrs=(1.0, 0.1)) -> list[list[float]]:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)])
    scheduler = build_scheduler(optimizer, schedule, max_steps)
    history = []
    for _ in range(max_steps + 1):
        history.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return history


def test_cosine_warms_up_linearly_then_decays_to_the_min_ratio() -> None:
    lrs = [lr for lr, _ in _lrs(ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1))]
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lrs[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])), "monotone after warmup"


def test_linear_decays_linearly_to_the_min_ratio() -> None:
    lrs = [lr for lr, _ in _lrs(ScheduleConfig(name="linear", warmup_steps=0, min_lr_ratio=0.2))]
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(0.6)
    assert lrs[100] == pytest.approx(0.2)


def test_wsd_is_flat_until_the_decay_phase() -> None:
    lrs = [lr for lr, _ in _lrs(ScheduleConfig(name="wsd", warmup_steps=10, decay_steps=20, min_lr_ratio=0.0))]
    assert lrs[10] == pytest.approx(1.0) and lrs[79] == pytest.approx(1.0)
    assert lrs[90] == pytest.approx(0.5)
    assert lrs[100] == pytest.approx(0.0)


def test_constant_after_warmup() -> None:
    lrs = [lr for lr, _ in _lrs(ScheduleConfig(name="constant", warmup_steps=4))]
    assert lrs[2] == pytest.approx(0.5)
    assert set(lrs[4:]) == {1.0}


def test_every_param_group_follows_the_same_shape() -> None:
    for main, companion in _lrs(ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)):
        assert companion == pytest.approx(0.1 * main)


def test_scheduler_state_reload_continues_the_schedule() -> None:
    schedule = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, schedule, 100)
    for _ in range(37):
        optimizer.step()
        scheduler.step()
    saved = scheduler.state_dict()
    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = build_scheduler(fresh_optimizer, schedule, 100)
    fresh.load_state_dict(saved)
    fresh_optimizer.param_groups[0]["lr"] = fresh.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    fresh_optimizer.step()
    fresh.step()
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
