"""Language-model workload: next-token prediction on windows of a token stream.

Training windows of ``seq_len + 1`` tokens start at uniformly random positions drawn
from a generator seeded by (seed, step, micro_step) — nanoGPT's sampling, made a pure
function of the step so every optimizer sees the same batches and a resumed run
continues with the very batches it would have seen. The validation set is a fixed
list of windows drawn with a constant seed: identical for every run and seed. The final
evaluation instead scores the whole validation split once: consecutive non-overlapping
windows (every token after the first is a target exactly once, up to the last partial window),
so final numbers carry no sampling offset of the small fixed set.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from soapbench.data.errors import DataError
from soapbench.data.fingerprint import token_fingerprint
from soapbench.data.tokens import TokenSplits

VALIDATION_SEED = 20240917  # fixed on purpose: the validation windows must not depend on the run's seed


def step_rng(seed: int, step: int, micro_step: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, step, micro_step]))


class LanguageModelWorkload:
    unit = "tokens"
    steps_per_epoch = None

    def __init__(
        self,
        model: nn.Module,
        splits: TokenSplits,
        *,
        seq_len: int,
        batch_size: int,
        eval_batches: int,
        seed: int,
        device: torch.device,
        shard: slice = slice(None),
    ):
        for split_name, tokens in (("train", splits.train), ("val", splits.val)):
            if len(tokens) <= seq_len + 1:
                raise DataError(
                    f"the {split_name} split of {splits.meta.get('source', 'the data')} has {len(tokens)} tokens, "
                    f"fewer than one window of seq_len+1={seq_len + 1}; use more text or a shorter seq_len"
                )
        self.model = model
        self.splits = splits
        self.data_fingerprint = token_fingerprint(splits.train, splits.val, splits.vocab_size, splits.meta)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.shard = shard
        rng = np.random.default_rng(VALIDATION_SEED)
        self.val_starts = rng.integers(0, len(splits.val) - seq_len - 1, size=(eval_batches, batch_size))

    def _windows(self, tokens: np.ndarray, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        window = np.asarray(tokens[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int64)
        batch = torch.from_numpy(window)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def train_batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Draw the global batch, then keep this process's rows: the data do not depend on the process count.
        starts = step_rng(self.seed, step, micro_step).integers(
            0, len(self.splits.train) - self.seq_len - 1, size=self.batch_size
        )
        return self._windows(self.splits.train, starts[self.shard])

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        return self.model.loss(model(inputs), targets)

    def batch_items(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[1].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        total = 0.0
        for starts in self.val_starts:
            inputs, targets = self._windows(self.splits.val, starts)
            logits = model(inputs)
            total += nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1)).item()
        return self._metrics(total / len(self.val_starts))

    def full_split_starts(self, max_batches: int | None = None) -> np.ndarray:
        """Starts of the non-overlapping windows tiling the validation split; with ``max_batches``,
        that many batches' worth of them, evenly spaced over the split."""
        starts = np.arange(0, len(self.splits.val) - self.seq_len, self.seq_len)
        if max_batches is not None and max_batches * self.batch_size < len(starts):
            starts = starts[np.linspace(0, len(starts) - 1, max_batches * self.batch_size).round().astype(int)]
        return starts

    @torch.no_grad()
    def evaluate_full(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        """Token-weighted mean loss over :meth:`full_split_starts`, in batches of ``batch_size`` windows."""
        starts = self.full_split_starts(max_batches)
        total = 0.0
        for first in range(0, len(starts), self.batch_size):
            inputs, targets = self._windows(self.splits.val, starts[first : first + self.batch_size])
            logits = model(inputs)
            total += nn.functional.cross_entropy(
                logits.float().flatten(0, 1), targets.reshape(-1), reduction="sum"
            ).item()
        return self._metrics(total / (len(starts) * self.seq_len))

    @staticmethod
    def _metrics(val_loss: float) -> dict[str, float]:
        return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 700.0))}

    def flops_per_item(self) -> float | None:
        flops = getattr(self.model, "flops_per_token", None)
        return flops() if callable(flops) else None

    def save_artifacts(self, model: nn.Module, step: int, run_dir: Path) -> list[Path]:
        return []
