"""Colour photos as (L, ab) pairs for the colorization workload, decoded and converted to Lab once.

The gradient-whitening paper trains on 4,258 MIT Places365 photos. Places cannot be had offline,
so the default splits are the four tars in ``shared/data/colorization`` as their README suggests:

* train (4,557 images): ``intel_scenes_seg_train_subset.tar`` + ``intel_scenes_seg_test.tar`` (outdoor
  scenes close to Places365 categories) + ``bsds500.tar`` ``bsds500/train/*``;
* val (324 images): ``bsds500.tar`` ``bsds500/{val,test}/*`` + ``kodak24.tar``.

Scaling follows the reference code (``lukemelas/Automatic-Image-Colorization`` ``utils.py``): the target
is ``(ab + 128) / 255`` (roughly [0, 1]) and the loss is the per-element MSE on it, which is the
"pixel-level MSE" (0.0029 for Adam and SOAP) the paper reports. The input is ``L / 100`` in [0, 1].
Deviation: the original feeds ``skimage.rgb2gray`` (luma of the gamma-encoded RGB) as the input but
treats it as ``L / 100`` when it rebuilds colour images; we feed the true ``L / 100``, so input and
reconstruction agree. Lab comes from ``kornia.color.rgb_to_lab`` (D65, sRGB), as skimage's.

Each image is resized (shorter side ``resize``, antialiased bicubic), centre-cropped to a
``resize`` x ``resize`` square and converted to scaled Lab, then stored as float16 ``[N, 3, S, S]``
in ``<cache_dir>/colorization/<name>-<key>/{train,val}.npy`` (written to a temp name, then renamed).
Converting before cropping is exact (Lab is per-pixel) and makes batches cheap. Training takes
random ``crop`` x ``crop`` windows with random horizontal flips; validation takes the centre crop.
Deviation: the original uses ``RandomSizedCrop(224)`` (random scale and aspect); fixed-scale crops
of the shorter-side-256 image keep the cache small and the batches a cheap, pure function of the step.

A split is a list of entries, each one of ``{tar: path, members: glob(s)}``, ``{folder: path,
pattern: glob}`` or ``{hub: dataset, hub_config, split, image_field}``; ``max_<split>_images``
keeps an evenly spaced subset (every class of a sorted listing stays represented).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from soapbench.data.cache import atomic_write_json, cache_key, locked, plain
from soapbench.data.errors import DataError
from soapbench.data.hub import require_hub

FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CONVERT_BATCH = 64


def rgb_to_scaled_lab(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1], [..., 3, H, W] -> (L/100, (a+128)/255, (b+128)/255), the reference code's scaling."""
    lab = kornia.color.rgb_to_lab(rgb)
    return torch.cat((lab[..., :1, :, :] / 100.0, (lab[..., 1:, :, :] + 128.0) / 255.0), dim=-3)


def scaled_lab_to_rgb(grey: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_scaled_lab` from the L/100 [.., 1, H, W] and scaled ab [.., 2, H, W] parts."""
    lab = torch.cat((grey * 100.0, ab * 255.0 - 128.0), dim=-3)
    return kornia.color.lab_to_rgb(lab.float(), clip=True)


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives, and a label for error messages (``tar:member``, a path, ``hf://...#i``)."""

    label: str
    load: Callable[[], bytes | Image.Image]


def _resolve(spec: str, data_root: Path) -> Path:
    path = Path(spec).expanduser()
    return path if path.is_absolute() else data_root / path


def _refuse_cut_short(archive: tarfile.TarFile, path: Path, key: str) -> None:
    """A whole archive ends in its end-of-archive marker (two zero blocks) where listing its members stopped.

    tarfile lists a truncated archive's members up to the cut without a word (and the last of them may be
    short), so a partly copied tar would train on a fraction of its images; that is refused instead.
    """
    archive.fileobj.seek(archive.offset)
    marker = archive.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise DataError(
            f"{key}: tar {path} is cut short (no end-of-archive marker after its {len(archive.getmembers())} readable "
            "members, so images are missing); copy or download it again"
        )


def _tar_refs(entry: Mapping[str, Any], data_root: Path, key: str) -> tuple[list[ImageRef], dict[str, Any]]:
    path = _resolve(str(entry["tar"]), data_root)
    if not path.is_file():
        raise DataError(
            f"{key}: tar {path} does not exist; point it at an image tar (relative paths are under data_root={data_root})"
        )
    patterns = entry.get("members") or ["*"]
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    try:
        # Kept open while the refs live: extracting by TarInfo seeks straight to the member,
        # where extracting by name would rescan the archive's headers for every image.
        archive = tarfile.open(path)
        members = sorted(
            (
                m
                for m in archive.getmembers()
                if m.isfile()
                and m.name.lower().endswith(IMAGE_SUFFIXES)
                and any(fnmatch.fnmatch(m.name, p) for p in patterns)
            ),
            key=lambda m: m.name,
        )
        _refuse_cut_short(archive, path, key)
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"{key}: cannot read tar {path} ({error}); check the file is intact") from error
    if not members:
        raise DataError(f"{key}: no image in {path} matches {patterns}; check the members pattern")

    def loader(member: tarfile.TarInfo) -> Callable[[], bytes]:
        def load() -> bytes:
            handle = archive.extractfile(member)
            if handle is None:
                raise OSError("not a regular file")
            return handle.read()

        return load

    refs = [ImageRef(f"{path}:{m.name}", loader(m)) for m in members]
    stat = path.stat()
    return refs, {"tar": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "members": patterns}


def _folder_refs(entry: Mapping[str, Any], data_root: Path, key: str) -> tuple[list[ImageRef], dict[str, Any]]:
    folder = _resolve(str(entry["folder"]), data_root)
    if not folder.is_dir():
        raise DataError(f"{key}: folder {folder} does not exist; point it at a directory of images")
    pattern = entry.get("pattern") or "*"
    files = sorted(p for p in folder.rglob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{key}: folder {folder} holds no images matching {pattern!r} ({', '.join(IMAGE_SUFFIXES)})")
    listing = hashlib.sha256("".join(f"{p}:{p.stat().st_size}\n" for p in files).encode()).hexdigest()
    return [ImageRef(str(p), p.read_bytes) for p in files], {
        "folder": str(folder.resolve()),
        "pattern": pattern,
        "listing": listing,
    }


def _hub_refs(entry: Mapping[str, Any], key: str, limit: int | None) -> tuple[list[ImageRef], dict[str, Any]]:
    name = str(entry["hub"])
    require_hub(f"{key}: dataset {name}", "use a {tar: ...} or {folder: ...} entry with local images instead")
    import datasets

    field = entry.get("image_field") or "image"
    split = entry.get("split") or "train"
    try:
        stream = datasets.load_dataset(name, entry.get("hub_config"), split=split, streaming=True)
    except Exception as error:
        raise DataError(
            f"{key}: cannot open hub dataset {name} [{split}] ({error}); check name, config and split"
        ) from error
    rows = stream.take(limit) if limit else stream
    refs = [ImageRef(f"hf://{name}[{split}]#{i}", (lambda image=row[field]: image)) for i, row in enumerate(rows)]
    return refs, {"hub": name, "hub_config": entry.get("hub_config"), "split": split, "image_field": field}


def list_images(
    entries: Any, data_root: Path, key: str, limit: int | None
) -> tuple[list[ImageRef], list[dict[str, Any]]]:
    """All images of a split, in order, and the identity of each entry (for the cache key)."""
    if not entries:
        raise DataError(
            f"{key}: no image sources; give a list of {{tar: ...}}, {{folder: ...}} or {{hub: ...}} entries"
        )
    refs: list[ImageRef] = []
    identity: list[dict[str, Any]] = []
    for entry in [entries] if isinstance(entries, Mapping) else entries:
        if not isinstance(entry, Mapping) or not ({"tar", "folder", "hub"} & set(entry)):
            raise DataError(f"{key}: entry {entry!r} needs one of tar, folder or hub")
        if "tar" in entry:
            found, ident = _tar_refs(entry, data_root, key)
        elif "folder" in entry:
            found, ident = _folder_refs(entry, data_root, key)
        else:
            found, ident = _hub_refs(entry, key, limit)
        refs.extend(found)
        identity.append(ident)
    if limit is not None and limit < len(refs):
        # Evenly spaced, so a sorted per-class listing keeps every class.
        refs = [refs[int(i)] for i in np.linspace(0, len(refs) - 1, limit).round()]
    return refs, identity


def decode_square(ref: ImageRef, size: int) -> np.ndarray:
    """Decode, shorter side -> ``size`` (antialiased bicubic), centre square crop: uint8 [size, size, 3]."""
    try:
        loaded = ref.load()
        image = loaded if isinstance(loaded, Image.Image) else Image.open(io.BytesIO(loaded))
        image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(
            f"unreadable image {ref.label} ({type(error).__name__}: {error}); remove it from the split or replace the file"
        ) from error
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BICUBIC
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _convert_split(refs: list[ImageRef], size: int, path: Path, desc: str) -> None:
    # Under the cache lock: a partial file left by a killed builder is simply overwritten here.
    tmp = path.with_name(path.name + ".partial.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(refs), 3, size, size))
    try:
        for start in tqdm(range(0, len(refs), CONVERT_BATCH), desc=desc, unit="batch"):
            chunk = np.stack([decode_square(ref, size) for ref in refs[start : start + CONVERT_BATCH]])
            rgb = torch.from_numpy(chunk).permute(0, 3, 1, 2).float() / 255.0
            out[start : start + len(chunk)] = rgb_to_scaled_lab(rgb).numpy().astype(np.float16)
        out.flush()
    except BaseException:
        del out
        tmp.unlink(missing_ok=True)  # a bad image must not leave a half-converted array in the cache
        raise
    del out
    os.replace(tmp, path)


@dataclass
class ColorizationData:
    """Scaled-Lab images: ``train`` [N, 3, S, S] and ``val`` [M, 3, S, S] float16 (memory-mapped), crop size, provenance."""

    train: np.ndarray
    val: np.ndarray
    crop: int
    meta: dict[str, Any]


def _positive(cfg: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = cfg.get(key, default)
    if value is not None and (not isinstance(value, int) or value <= 0):
        raise DataError(f"data.{key}: {value!r} must be a positive integer{' or null' if default is None else ''}")
    return value


def load_colorization_data(data_cfg: Mapping[str, Any], data_root: Path, cache_dir: Path) -> ColorizationData:
    """Decode and convert the configured splits once (cached), then memory-map them."""
    cfg = plain(data_cfg)
    data_root, cache_dir = Path(data_root), Path(cache_dir)
    resize, crop = _positive(cfg, "resize", 256), _positive(cfg, "crop", 224)
    if crop > resize or crop % 8:
        raise DataError(f"data.crop: {crop} must be a multiple of 8 and at most data.resize={resize}")
    listings = {}
    for split in ("train", "val"):
        limit = _positive(cfg, f"max_{split}_images", None)
        listings[split] = list_images(cfg.get(split), data_root, f"data.{split}", limit)
    identity = {
        "format_version": FORMAT_VERSION,
        "resize": resize,
        **{f"{s}_sources": listings[s][1] for s in listings},
        **{f"{s}_images": [ref.label for ref in listings[s][0]] for s in listings},
    }
    name = str(cfg.get("name") or "colorization")
    out_dir = cache_dir / "colorization" / f"{name}-{cache_key(identity)}"
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        with locked(out_dir):
            if not manifest_path.exists():
                for split, (refs, _) in listings.items():
                    _convert_split(refs, resize, out_dir / f"{split}.npy", f"decode+Lab {name}/{split}")
                counts = {split: len(refs) for split, (refs, _) in listings.items()}
                atomic_write_json(manifest_path, {"name": name, "images": counts, **identity})
    manifest = json.loads(manifest_path.read_text())
    arrays = {split: np.load(out_dir / f"{split}.npy", mmap_mode="r") for split in ("train", "val")}
    meta = {
        "cache_dir": str(out_dir),
        "resize": resize,
        "crop": crop,
        "input": "L/100 (kornia rgb_to_lab, D65)",
        "target": "(ab+128)/255",
        "train_images": manifest["images"]["train"],
        "val_images": manifest["images"]["val"],
        "train_sources": manifest["train_sources"],
        "val_sources": manifest["val_sources"],
    }
    return ColorizationData(train=arrays["train"], val=arrays["val"], crop=crop, meta=meta)
