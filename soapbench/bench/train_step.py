"""Training-step ratio (issue 14 item 4): the whole training step of each optimizer against AdamW's, in one process.

The step is the trainer's own (``soapbench.training_step.TrainStep``): the workload's batch for (seed, step),
forward and loss under the configured autocast, backward with the trainer's loss scaling, its gradient handling
(``soapbench.gradients``: unscale, the preset's clipping), ``optimizer.step()``, the LR schedule, ``zero_grad``,
the EMA if the preset keeps one; every interval closed by a device synchronisation. Each arm is built by
``soapbench.trainer.build_training``, as ``scripts/train.py model=<preset> optimizer=<name>`` builds it (same seed:
same initial weights and the same batch sequence), and keeps its own step counter.

Protocol, for a machine shared with other work:

* ``warmup`` untimed steps per arm first (SOAP-like optimizers build their preconditioner on the first one).
* Then ``blocks`` rounds; each round runs one block of ``block_steps`` consecutive steps per arm, the arms in an
  order rotated by one per round, so slow phases of the machine hit every arm alike. ``block_steps`` defaults to
  the largest precondition frequency among the arms, so every SOAP block holds exactly one refresh and the mean
  amortises it as a real run does; the median is the typical non-refresh step.
* Garbage collection is off inside blocks. Reported per arm: mean, median and std of the step and of
  ``optimizer.step()``, and the step's mean and median as ratios to AdamW's.
"""

from __future__ import annotations

import gc
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from soapbench.bench import floor
from soapbench.bench.catalog import compose, optimizer_setup, preset_config
from soapbench.bench.discovery import import_submodules
from soapbench.bench.step_timing import garbage_collection_paused, rotated
from soapbench.machine_load import load_average


@dataclass
class Arm:
    """One optimizer training its own copy of the preset, step by step."""

    name: str
    step: Callable[[int], tuple[float, float]]
    frequency: int | None
    steps_done: int = 0
    step_seconds: list[float] = field(default_factory=list)
    optimizer_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def run(self, count: int, record: bool) -> None:
        for _ in range(count):
            seconds, optimizer_seconds = self.step(self.steps_done)
            self.steps_done += 1
            if record:
                self.step_seconds.append(seconds)
                self.optimizer_seconds.append(optimizer_seconds)

    def summary(self) -> dict[str, Any]:
        def stats(samples: Sequence[float]) -> dict[str, float]:
            return {"mean": statistics.fmean(samples), "median": statistics.median(samples),
                    "std": statistics.stdev(samples) if len(samples) > 1 else 0.0, "n": len(samples)}  # fmt: skip

        return {
            "optimizer": self.name,
            "frequency": self.frequency,
            "step": stats(self.step_seconds),
            "optimizer_step": stats(self.optimizer_seconds),
            "final_loss": self.losses[-1] if self.losses else None,
        }


def arm_overrides(label: str) -> tuple[str, list[str]]:
    """``"soap+stack_shapes=false"`` → ``("soap", ["+optimizer.stack_shapes=false"])``: an optimizer with extra knobs."""
    name, *knobs = label.split("+")
    return name, [f"++optimizer.{knob}" for knob in knobs]


def build_arm(preset: str, label: str, overrides: Sequence[str], device: torch.device) -> Arm:
    """The trainer's step for ``model=<preset> optimizer=<name>`` (+ knobs), built as a run builds it."""
    from soapbench.config import load_run_config
    from soapbench.distributed import DistContext
    from soapbench.optimizers.registry import split_optimizer_config
    from soapbench.trainer import build_training

    optimizer_name, knobs = arm_overrides(label)
    cfg = compose([f"model={preset}", f"optimizer={optimizer_name}", f"device={device}", *overrides, *knobs])
    train_step = build_training(cfg, load_run_config(cfg), device, DistContext(), announce=False).step
    train_step.enter_training_mode()
    frequency = split_optimizer_config(cfg["optimizer"])[1].get("precondition_frequency")
    arm = Arm(label, lambda step: (0.0, 0.0), int(frequency) if frequency else None)

    def one_step(step: int) -> tuple[float, float]:
        result = train_step(step)
        arm.losses.append(float(result.loss))  # outside the clock, as the trainer's read
        return result.seconds, result.optimizer_seconds

    arm.step = one_step
    return arm


def alternating_blocks(
    arms: Sequence[Arm], *, warmup: int, blocks: int, block_steps: int, progress: Callable[[str], None] | None = None
) -> None:
    """Warm every arm up, then time ``blocks`` rounds of one block per arm, in rotated order (module docstring)."""
    report = progress or (lambda line: None)
    for arm in arms:
        arm.run(warmup, record=False)
    with garbage_collection_paused():
        for block in range(blocks):
            for arm in rotated(arms, block):
                arm.run(block_steps, record=True)
            gc.collect()  # between rounds, outside every timed step
            report(f"  block {block + 1}/{blocks}")


def ratio_section(
    preset: str,
    optimizers: Sequence[str],
    *,
    overrides: Sequence[str] = (),
    device: torch.device,
    warmup: int = 2,
    blocks: int = 8,
    block_steps: int | None = None,
    threads: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The ``train_step_ratio`` report section: every arm's step statistics and its ratio to AdamW's.

    ``optimizers`` are registry names, optionally with knobs: ``soap+stack_shapes=false``.
    """
    import_submodules("soapbench.optimizers")
    names = list(optimizers) if "adamw" in optimizers else ["adamw", *optimizers]
    arms = [build_arm(preset, name, overrides, device) for name in names]
    steps = block_steps or max([arm.frequency or 1 for arm in arms])
    load_before = load_average()
    alternating_blocks(arms, warmup=warmup, blocks=blocks, block_steps=steps, progress=progress)
    load = {"before": load_before, "after": load_average(), "cores": os.cpu_count()}
    rows = [arm.summary() for arm in arms]
    adamw = rows[names.index("adamw")]
    for row in rows:
        row["ratio_mean"] = row["step"]["mean"] / adamw["step"]["mean"]
        row["ratio_median"] = row["step"]["median"] / adamw["step"]["median"]
    soap_floor = None
    if "soap" in names:
        # AdamW's step with its optimizer.step() swapped for SOAP's matmul floor: the best ratio SOAP's math allows.
        setup = optimizer_setup("soap")
        shapes = floor.main_optimizer_shapes(setup, preset_config(preset, overrides)["model"])
        soap_floor = floor.soap_floor(shapes, setup.effective_hparams(), device)
        soap_floor["best_possible_ratio"] = (
            adamw["step"]["mean"] - adamw["optimizer_step"]["mean"] + soap_floor["mean_seconds"]
        ) / adamw["step"]["mean"]
    protocol = (
        f"Whole training step (data, forward, backward, clipping, `optimizer.step()`, schedule; the trainer's own "
        f"step, `soapbench.training_step.TrainStep`) of `model={preset}` per optimizer on {device}, {threads} "
        f"torch threads, in one process: {warmup} untimed warm-up steps per arm, then {blocks} rounds of one block of "
        f"{steps} consecutive steps per arm (so each SOAP block holds one refresh at f = {steps}), the arms' order "
        "rotated by one per round so machine noise hits every arm alike; garbage collection off inside blocks. "
        "Ratios: the arm's step mean (median) over AdamW's."
    )
    return {"protocol": protocol, "preset": preset, "overrides": list(overrides), "block_steps": steps,
            "blocks": blocks, "warmup": warmup, "rows": rows, "soap_floor": soap_floor, "load_average": load}  # fmt: skip
