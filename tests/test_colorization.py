"""Colorization: the network, Lab scaling, the cached photo dataset, and the workload end to end on a tiny subset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from soapbench.data.colorization import load_colorization_data, rgb_to_scaled_lab, scaled_lab_to_rgb
from soapbench.data.errors import DataError
from soapbench.models.colorization import ColorizationNet, original_registered_parameters
from soapbench.models.registry import build_model
from soapbench.optimizers.param_groups import parameter_roles
from soapbench.workloads.colorization import ColorizationWorkload

DATA_ROOT = Path(os.environ.get("SOAPBENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# 24 evenly spaced Intel scenes (all 6 classes) for training, 8 Kodak photos for validation, 32 px crops.
TINY = {
    "name": "tiny",
    "kind": "images",
    "train": [{"tar": "colorization/intel_scenes_seg_train_subset.tar"}],
    "val": [{"tar": "colorization/kodak24.tar"}],
    "resize": 40,
    "crop": 32,
    "max_train_images": 24,
    "max_val_images": 8,
    "preview_images": 3,
}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU, OpenMP spin-waiting makes 2 threads ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("colorization_cache")


def test_model_shapes_counts_and_roles() -> None:
    model = build_model({"arch": "colorization", "in_channels": 1})
    out = model(torch.rand(2, 1, 64, 48))
    assert out.shape == (2, 2, 64, 48)
    assert model.num_parameters() == model.num_parameters(trainable_only=True) == 954_530
    assert original_registered_parameters() == 11_792_738  # the paper's "~12M": registered, mostly unused
    roles = parameter_roles(model)
    assert roles["conv1.weight"] == "input" and roles["decoder.conv5.weight"] == "head"
    assert roles["decoder.conv5.bias"] == "vector" and roles["layer2.0.conv1.weight"] == "matrix"
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())  # nothing dead is registered
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.rand(1, 1, 30, 30))


def test_lab_scaling_and_round_trip() -> None:
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    scaled = rgb_to_scaled_lab(rgb)
    # White: L = 100, a = b = 0. sRGB red (D65): L 53.24, a 80.09, b 67.20.
    assert torch.allclose(scaled[0, :, 0, 0], torch.tensor([1.0, 128 / 255, 128 / 255]), atol=1e-3)
    red = torch.tensor([scaled[0, 0, 0, 1] * 100, scaled[0, 1, 0, 1] * 255 - 128, scaled[0, 2, 0, 1] * 255 - 128])
    assert torch.allclose(red, torch.tensor([53.24, 80.09, 67.20]), atol=0.1)
    torch.manual_seed(0)
    photo = torch.rand(2, 3, 8, 8)
    lab = rgb_to_scaled_lab(photo)
    assert lab.min() >= 0 and lab.max() <= 1
    assert torch.allclose(scaled_lab_to_rgb(lab[:, :1], lab[:, 1:]), photo, atol=1e-4)
    stored = lab.half().float()  # the cache keeps float16
    assert torch.allclose(scaled_lab_to_rgb(stored[:, :1], stored[:, 1:]), photo, atol=5e-3)


def test_dataset_is_cached_and_batches_are_a_pure_function_of_the_step(cache_dir, monkeypatch) -> None:
    data = load_colorization_data(TINY, DATA_ROOT, cache_dir)
    assert data.train.shape == (24, 3, 40, 40) and data.val.shape == (8, 3, 40, 40)
    assert data.train.dtype == np.float16
    manifest = json.loads((Path(data.meta["cache_dir"]) / "manifest.json").read_text())
    classes = {label.split(":")[-1].split("/")[1] for label in manifest["train_images"]}
    assert len(classes) == 6  # the evenly spaced subset keeps every scene class

    import soapbench.data.colorization as module

    monkeypatch.setattr(
        module, "decode_square", lambda *a: (_ for _ in ()).throw(AssertionError("cached: no decoding"))
    )
    a = ColorizationWorkload(ColorizationNet(), TINY, DATA_ROOT, cache_dir, batch_size=4, seed=3, device="cpu")
    b = ColorizationWorkload(ColorizationNet(), TINY, DATA_ROOT, cache_dir, batch_size=4, seed=3, device="cpu")
    assert a.steps_per_epoch == 6
    for step, micro in [(0, 0), (5, 0), (7, 0)]:
        (ga, aa), (gb, ab) = a.train_batch(step, micro), b.train_batch(step, micro)
        assert ga.shape == (4, 1, 32, 32) and aa.shape == (4, 2, 32, 32)
        assert torch.equal(ga, gb) and torch.equal(aa, ab)
    assert not torch.equal(a.train_batch(0, 0)[0], a.train_batch(1, 0)[0])
    other = ColorizationWorkload(ColorizationNet(), TINY, DATA_ROOT, cache_dir, batch_size=4, seed=4, device="cpu")
    assert not torch.equal(a.train_batch(0, 0)[0], other.train_batch(0, 0)[0])
    # One epoch visits every image exactly once (the L channel's mean identifies an image up to crop/flip).
    seen = torch.cat([a._epoch_order(0)[s * 4 : s * 4 + 4] for s in range(6)])
    assert sorted(seen.tolist()) == list(range(24))


def test_unreadable_image_names_the_file(tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    cfg = dict(
        TINY, train=[{"folder": str(folder)}], val=[{"folder": str(folder)}], max_train_images=None, max_val_images=None
    )
    with pytest.raises(DataError, match=f"unreadable image {folder / 'broken.jpg'}"):
        load_colorization_data(cfg, DATA_ROOT, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.partial.npy")), "a bad image leaves no half-converted array"
    with pytest.raises(DataError, match="colorization/missing.tar does not exist"):
        load_colorization_data(dict(TINY, train=[{"tar": "colorization/missing.tar"}]), DATA_ROOT, tmp_path / "cache")


def test_workload_learns_and_saves_an_image_grid(cache_dir, tmp_path) -> None:
    torch.manual_seed(0)
    model = ColorizationNet()
    workload = ColorizationWorkload(
        model, TINY, DATA_ROOT, cache_dir, batch_size=8, seed=0, device="cpu", eval_batches=1
    )
    assert workload.unit == "samples" and workload.steps_per_epoch == 3
    assert workload.flops_per_item() > 0
    model.eval()
    with torch.no_grad():
        before = workload.evaluate(model)
    assert set(before) == {"val_loss", "val_mse"} and before["val_loss"] == before["val_mse"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for step in range(30):
        loss = workload.loss(model, workload.train_batch(step, 0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:3])
    model.eval()
    with torch.no_grad():
        after = workload.evaluate(model)
    assert after["val_mse"] < 0.2 * before["val_mse"]
    model.train()
    paths = workload.save_artifacts(model, 30, tmp_path)
    assert model.training  # the trainer's mode is restored
    assert paths == [tmp_path / "images" / "step_000030.png"]
    with Image.open(paths[0]) as grid:
        assert grid.mode == "RGB" and grid.width == 3 * (32 + 4) and grid.height == 3 * (32 + 4)


def test_shards_partition_the_micro_batch(cache_dir) -> None:
    whole = ColorizationWorkload(ColorizationNet(), TINY, DATA_ROOT, cache_dir, batch_size=4, seed=1, device="cpu")
    halves = [
        ColorizationWorkload(
            ColorizationNet(), TINY, DATA_ROOT, cache_dir, batch_size=4, seed=1, device="cpu", shard=part
        )
        for part in (slice(0, 2), slice(2, 4))
    ]
    grey, ab = whole.train_batch(2, 0)
    parts = [h.train_batch(2, 0) for h in halves]
    assert torch.equal(torch.cat([p[0] for p in parts]), grey) and torch.equal(torch.cat([p[1] for p in parts]), ab)


def test_final_evaluation_scores_every_validation_image(cache_dir) -> None:
    torch.manual_seed(0)
    model = ColorizationNet().eval()
    workload = ColorizationWorkload(
        model, TINY, DATA_ROOT, cache_dir, batch_size=3, seed=0, device="cpu", eval_batches=1
    )
    assert len(workload.val) == 3, "the fixed set: one batch"
    val = torch.from_numpy(np.asarray(workload.data.val, dtype=np.float32))
    crops = val[:, :, 4:36, 4:36]  # centre 32 px of the 40 px images
    with torch.no_grad():
        expected = torch.cat(
            [(model(image[None, :1]).float() - image[None, 1:]).square().flatten() for image in crops]
        ).mean()
        full = workload.evaluate_full(model)
        two = workload.evaluate_full(model, max_batches=2)
    assert len(crops) == 8 and full["val_loss"] == full["val_mse"] == pytest.approx(expected.item(), rel=1e-5)
    assert two["val_loss"] != full["val_loss"], "a budget of 2 batches scores 6 of the 8 images"


def test_a_tar_cut_short_is_refused_not_trained_on_the_images_it_still_lists(tmp_path) -> None:
    import tarfile

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(6):
        Image.new("RGB", (40, 40), (40 * index, 30, 200 - 30 * index)).save(photos / f"{index}.png")
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as archive:
        for image in sorted(photos.iterdir()):
            archive.add(image, arcname=image.name)
    cfg = dict(TINY, train=[{"tar": str(whole)}], val=[{"tar": str(whole)}], max_train_images=None, max_val_images=None)
    assert load_colorization_data(cfg, DATA_ROOT, tmp_path / "cache").meta["train_images"] == 6

    last = max(tarfile.open(whole).getmembers(), key=lambda member: member.offset)
    for cut in (last.offset, last.offset + 200):  # before the last image's header; inside it
        cut_short = tmp_path / f"cut{cut}.tar"
        cut_short.write_bytes(whole.read_bytes()[:cut])
        cfg = dict(cfg, train=[{"tar": str(cut_short)}])
        with pytest.raises(DataError, match=f"^data.train: tar {cut_short} is cut short"):
            load_colorization_data(cfg, DATA_ROOT, tmp_path / "cache")
