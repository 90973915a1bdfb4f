"""One training step, the same code for the trainer and for the benchmarks that time it.

A step: the workload's batch for each (step, micro_step), forward and loss under the configured autocast,
backward with the trainer's loss scaling, its gradient handling (``soapbench.gradients``: unscale, the preset's
clipping), ``scaler.step(optimizer)`` and ``scaler.update()``, the LR schedule, ``zero_grad``, then the EMA
update (and, every ``ema.overwrite_interval`` steps, the EMA weights copied into the model). The step is timed
whole and its ``optimizer.step()`` share on its own, each interval closed by a device synchronisation
(``soapbench.timing.Stopwatch``), so the trainer's ``train_seconds`` and a benchmark's step time measure the
same work. Reading the loss (a host sync, and across ranks a collective) is left to the caller, outside the clock.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from soapbench.gradients import prepare_gradients, scale_loss
from soapbench.optimizers.modes import set_mode
from soapbench.timing import Stopwatch


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's autocast for ``trainer.precision`` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class StepResult:
    # This process's loss, averaged over the micro-batches; still on the device (not yet averaged across ranks).
    loss: torch.Tensor
    # Tokens or samples of the step, every rank's together.
    items: int
    # The global gradient norm before clipping, when global-norm clipping is on.
    grad_norm: torch.Tensor | None
    seconds: float
    optimizer_seconds: float
    # Process CPU time over the step (``soapbench.machine_load`` compares it with ``seconds``).
    cpu_seconds: float


@dataclass
class TrainStep:
    """Everything one optimizer step touches; call it with the step's index (batches are a function of it)."""

    workload: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    trainer: Any
    device: torch.device
    ema: torch.optim.swa_utils.AveragedModel | None = None
    # The module the loss is computed through: the model itself, or its DDP / torch.compile wrapper.
    forward_model: torch.nn.Module | None = None
    world_size: int = 1
    parameters: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        if self.forward_model is None:
            self.forward_model = self.model
        self.parameters = list(self.model.parameters())
        self._step_clock = Stopwatch(self.device)
        self._optimizer_clock = Stopwatch(self.device)

    def enter_training_mode(self) -> None:
        """Before the first step: an optimizer with modes (Schedule-Free) starts in neither."""
        self.model.train()
        set_mode(self.optimizer, "train")

    def state_dicts(self) -> dict[str, Any]:
        """What a checkpoint keeps of the step's objects, under the checkpoint's keys."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }  # fmt: skip

    def load_state_dicts(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])

    def __call__(self, step: int) -> StepResult:
        trainer = self.trainer
        self._step_clock.start()
        loss_sum = torch.zeros((), device=self.device)
        items = 0
        for micro_step in range(trainer.grad_accum_steps):
            batch = self.workload.train_batch(step, micro_step)
            with autocast(trainer.precision, self.device):
                loss = self.workload.loss(self.forward_model, batch)
            scale_loss(loss, trainer, self.scaler).backward()
            loss_sum += loss.detach().float()
            items += self.workload.batch_items(batch) * self.world_size
        grad_norm = prepare_gradients(self.parameters, self.optimizer, self.scaler, trainer)
        self._optimizer_clock.start()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        optimizer_seconds = self._optimizer_clock.stop()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
            if trainer.ema.overwrite_interval and (step + 1) % trainer.ema.overwrite_interval == 0:
                with torch.no_grad():
                    for ema_param, param in zip(self.ema.module.parameters(), self.model.parameters()):
                        param.copy_(ema_param)
        seconds = self._step_clock.stop()
        return StepResult(loss_sum / trainer.grad_accum_steps, items, grad_norm, seconds, optimizer_seconds,
                          self._step_clock.last_cpu)  # fmt: skip


__all__ = ["StepResult", "TrainStep", "autocast"]
