"""Image colorization (L -> ab), the vision workload of the gradient-whitening paper (§6).

The paper trains the Melas-Kyriazi & Han network (``models/colorization.py``) with an MSE loss on
the scaled ab channels for 20 epochs and reports the final pixel-level validation MSE (Adam 0.0029,
SOAP 0.0029, Shampoo 0.0035). This workload feeds it the photos of ``data/colorization.py``:

* training: epochs over the train images; each epoch is a permutation seeded by (seed, epoch), and
  each micro-batch's crop offsets and flips by (seed, step, micro_step), so a batch is a pure
  function of the step (same data order for every optimizer; resuming needs only the step counter).
  The last incomplete global batch of an epoch is dropped, as ``DataLoader(drop_last=True)`` would;
* loss: ``F.mse_loss(model(L), ab)``, the mean over pixels and both ab channels (``nn.MSELoss`` as
  in the reference code);
* evaluation: the same MSE over the centre crops of the validation images (all of them, or
  ``eval_batches x batch_size`` evenly spaced ones), reported as ``val_loss`` = ``val_mse``; the final
  evaluation takes all of them (or ``final_eval_batches x batch_size``);
* artifacts: a PNG grid of (grey input, prediction, ground truth) for a fixed set of validation images.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from soapbench.data.colorization import ColorizationData, load_colorization_data, scaled_lab_to_rgb
from soapbench.data.errors import DataError
from soapbench.data.fingerprint import cached_file_sha256

Batch = tuple[torch.Tensor, torch.Tensor]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def images_fingerprint(data: ColorizationData) -> dict[str, Any]:
    """The decoded arrays' hashes (remembered beside them in the cache, so they are read once)."""
    cached = Path(data.meta["cache_dir"])
    hashes = {f"{split}_sha256": cached_file_sha256(cached / f"{split}.npy") for split in ("train", "val")}
    return {"kind": "images", "crop": data.crop, **hashes}


class ColorizationWorkload:
    unit = "samples"

    def __init__(
        self,
        model: nn.Module,
        data_cfg: Mapping[str, Any],
        data_root: Path,
        cache_dir: Path,
        batch_size: int,
        seed: int,
        device: torch.device | str,
        grad_accum_steps: int = 1,
        eval_batches: int | None = None,
        shard: slice = slice(None),
    ) -> None:
        self.model = model
        # Data parallelism: this process takes these rows of every (global) micro-batch.
        self.shard = shard
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.grad_accum_steps = grad_accum_steps
        self.seed = seed
        self.data: ColorizationData = load_colorization_data(data_cfg, data_root, cache_dir)
        self.crop = self.data.crop
        self.data_fingerprint = images_fingerprint(self.data)
        images_per_step = batch_size * grad_accum_steps
        self.steps_per_epoch = len(self.data.train) // images_per_step
        if self.steps_per_epoch == 0:
            raise DataError(
                f"data.max_train_images: {len(self.data.train)} training images are fewer than one step's "
                f"{images_per_step} (trainer.batch_size x trainer.grad_accum_steps); use more images or a smaller batch"
            )
        self.val = self._centre_crops(eval_batches)
        count = min(int(data_cfg.get("preview_images", 8)), len(self.val))
        self.preview_index = np.linspace(0, len(self.val) - 1, count).round().astype(int).tolist() if count else []
        self._flops: float | None = None

    def _centre_crops(self, max_batches: int | None) -> torch.Tensor:
        """Centre crops of ``max_batches x batch_size`` validation images (None: all), evenly spaced so every
        source stays in; kept in memory as float16 (a few hundred images)."""
        offset = (self.data.val.shape[-1] - self.crop) // 2
        count = len(self.data.val) if max_batches is None else min(len(self.data.val), max_batches * self.batch_size)
        index = np.linspace(0, len(self.data.val) - 1, count).round().astype(int)
        val = np.asarray(self.data.val[index])[:, :, offset : offset + self.crop, offset : offset + self.crop]
        return torch.from_numpy(np.ascontiguousarray(val))

    # --- training ---------------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_seed(self.seed, 0xC010, epoch))
        return torch.randperm(len(self.data.train), generator=generator)

    def train_batch(self, step: int, micro_step: int) -> Batch:
        epoch, position = divmod(step, self.steps_per_epoch)  # steps past the last epoch start a new one
        start = (position * self.grad_accum_steps + micro_step) * self.batch_size
        index = self._epoch_order(epoch)[start : start + self.batch_size].sort().values.numpy()
        generator = torch.Generator().manual_seed(_seed(self.seed, 0xC209, step, micro_step))
        room = self.data.train.shape[-1] - self.crop
        # Drawn for the whole micro-batch, then sharded, so a row's crop does not depend on the world size.
        offsets = torch.randint(0, room + 1, (len(index), 2), generator=generator).tolist()[self.shard]
        flips = torch.rand(len(index), generator=generator).lt(0.5).tolist()[self.shard]
        images = torch.from_numpy(np.asarray(self.data.train[index[self.shard]]))
        crops = []
        for image, (top, left), flip in zip(images, offsets, flips):
            window = image[:, top : top + self.crop, left : left + self.crop]
            crops.append(window.flip(-1) if flip else window)
        batch = torch.stack(crops).to(self.device, torch.float32, non_blocking=True)
        return batch[:, :1], batch[:, 1:]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        grey, ab = batch
        return F.mse_loss(model(grey).float(), ab)

    def batch_items(self, batch: Batch) -> int:
        return int(batch[0].shape[0])

    # --- evaluation -------------------------------------------------------------------------------

    def _val_batches(self, index: list[int] | None = None, images: torch.Tensor | None = None):
        data = self.val if images is None else images
        data = data if index is None else data[index]
        for start in range(0, len(data), self.batch_size):
            chunk = data[start : start + self.batch_size].to(self.device, torch.float32)
            yield chunk[:, :1], chunk[:, 1:]

    def evaluate(self, model: nn.Module, images: torch.Tensor | None = None) -> dict[str, float]:
        total, count = 0.0, 0
        for grey, ab in self._val_batches(images=images):
            total += F.mse_loss(model(grey).float(), ab, reduction="sum").item()
            count += ab.numel()
        mse = total / count
        return {"val_loss": mse, "val_mse": mse}

    def evaluate_full(self, model: nn.Module, max_batches: int | None = None) -> dict[str, float]:
        """The same MSE over the centre crops of all validation images (or ``max_batches`` batches of them)."""
        return self.evaluate(model, images=self._centre_crops(max_batches))

    def flops_per_item(self) -> float | None:
        """Forward + backward FLOPs per training image, counted once by PyTorch's FlopCounterMode on a meta copy."""
        if self._flops is None:
            meta_model = copy.deepcopy(self.model).to("meta")
            grey = torch.zeros(1, 1, self.crop, self.crop, device="meta")
            counter = FlopCounterMode(display=False)
            with counter:
                meta_model(grey).sum().backward()
            self._flops = float(counter.get_total_flops())
        return self._flops

    # --- artifacts --------------------------------------------------------------------------------

    def save_artifacts(self, model: nn.Module, step: int, run_dir: Path) -> list[Path]:
        """``run_dir/images/step_XXXXXX.png``: one row per preview image: grey input | prediction | ground truth."""
        if not self.preview_index:
            return []
        was_training = model.training
        model.eval()
        rows = []
        with torch.no_grad():
            for grey, ab in self._val_batches(self.preview_index):
                predicted = model(grey).float().clamp(0.0, 1.0)
                panels = [
                    scaled_lab_to_rgb(grey, torch.full_like(ab, 128.0 / 255.0)),  # a = b = 0: neutral grey
                    scaled_lab_to_rgb(grey, predicted),
                    scaled_lab_to_rgb(grey, ab),
                ]
                rows.append(torch.cat([self._pad(p) for p in panels], dim=-1))
        model.train(was_training)
        grid = torch.cat([row for chunk in rows for row in chunk], dim=-2)
        pixels = (grid.permute(1, 2, 0).cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        path = Path(run_dir) / "images" / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.png")
        Image.fromarray(pixels).save(tmp)
        os.replace(tmp, path)
        return [path]

    @staticmethod
    def _pad(images: torch.Tensor, border: int = 2) -> torch.Tensor:
        return F.pad(images, (border, border, border, border), value=1.0)
