"""Learning-rate schedules as torch schedulers (from transformers) that drive any optimizer.

Each is a ``LambdaLR`` multiplying every param group's initial lr, so companion
optimizers with their own lr follow the same shape.

    cosine    linear warmup, then cosine from the peak to min_lr_ratio × peak at max_steps
    linear    linear warmup, then linear decay to min_lr_ratio × peak at max_steps
    wsd       warmup-stable-decay: warmup, constant, then a decay of decay_steps to min_lr_ratio × peak
    constant  linear warmup, then constant
"""

from __future__ import annotations

import torch
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_wsd_schedule,
)

from soapbench.config import ScheduleConfig


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, max_steps: int):
    warmup = min(schedule.warmup_steps, max_steps)
    if schedule.name == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=max_steps, min_lr_rate=schedule.min_lr_ratio
        )
    if schedule.name == "linear":
        # transformers' linear schedule decays to 0; WSD with no stable phase decays linearly to min_lr_ratio.
        return get_wsd_schedule(
            optimizer,
            num_warmup_steps=warmup,
            num_decay_steps=max_steps - warmup,
            num_stable_steps=0,
            decay_type="linear",
            min_lr_ratio=schedule.min_lr_ratio,
        )
    if schedule.name == "wsd":
        decay = min(schedule.decay_steps, max_steps - warmup)
        return get_wsd_schedule(
            optimizer,
            num_warmup_steps=warmup,
            num_decay_steps=decay,
            num_stable_steps=max_steps - warmup - decay,
            decay_type=schedule.decay_type,
            min_lr_ratio=schedule.min_lr_ratio,
        )
    if schedule.name == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    raise ValueError(f"unknown schedule {schedule.name!r}")
