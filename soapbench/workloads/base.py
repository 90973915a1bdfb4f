"""What the trainer needs from a workload (a model plus its data), and nothing more.

The trainer is agnostic of model, data and optimizer; a workload owns all three of
its own concerns: which batch a step sees, how a batch becomes a loss, and how
the model is evaluated. Batches are a pure function of (seed, step, micro_step), so
every optimizer sees the same data order for the same seed and a resumed run
continues from the step counter alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


class Workload(Protocol):
    model: nn.Module
    # What throughput counts: "tokens" for language models, "samples" for images.
    unit: str
    # Optimizer steps in one pass over the training set, or None when sampling is i.i.d. windows.
    steps_per_epoch: int | None
    # Hashes of the data as the model sees it (token ids, decoded images): part of the run's identity.
    data_fingerprint: dict[str, Any]

    def train_batch(self, step: int, micro_step: int) -> Any:
        """The micro-batch for (step, micro_step), already on the workload's device."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Scalar mean training loss of one micro-batch (the model is in train mode)."""

    def batch_items(self, batch: Any) -> int:
        """Tokens (or samples) in a micro-batch, for throughput."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on the fixed validation set; must include ``val_loss``. Called under no_grad, eval mode."""

    def evaluate_full(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        """The same metrics on the whole validation split (or ``max_batches`` batches spread over it),
        for the final numbers: the fixed set is cheap but small enough to carry an optimizer-dependent offset."""

    def flops_per_item(self) -> float | None:
        """Training FLOPs (forward+backward) per token/sample for MFU, or None when unknown."""

    def save_artifacts(self, model: nn.Module, step: int, run_dir: Path) -> list[Path]:
        """Files worth looking at after an evaluation (e.g. an image grid); may return []."""
