"""Tokenize a text corpus once into memory-mapped token files; load them as :class:`~soapbench.data.tokens.TokenSplits`.

The SOAP paper trains on C4 (``allenai/c4``, ``en``) tokenized with T5's tokenizer (vocab 32,100),
through the OLMo pipeline, which concatenates documents with ``</s>`` between them and samples
fixed-length windows. We do the same: every document's ids, then ``eos_id``, appended to one flat
``uint16`` file per split (``uint32`` when the vocabulary exceeds 65,536), which the LM workload
memory-maps and samples windows from. One file per split (not many shards) because windows are drawn
at uniformly random positions across the whole split and ``TokenSplits`` holds one 1-D array.

Data config (``configs/data/*.yaml``, ``kind: tokenized``)::

    name: gutenberg_t5
    vocab_size: 32100              # optional; must equal the tokenizer's vocabulary size
    source:                        # local files (paths/globs/lists, relative to the data root) ...
      train: text/gutenberg_en/train.txt.gz
      val: text/gutenberg_en/val.txt.gz     # optional; without it a validation split is held out
      text_field: text                      # for .jsonl / .parquet / hub rows
      hub: allenai/c4              # ... or a Hugging Face dataset (used when no local `train` is set)
      hub_config: en
      train_split: train
      val_split: validation        # null: hold out the first max_val_tokens of the train stream
    tokenizer: {path: tokenizers/t5}        # see data/text_tokenizers.py
    max_train_tokens: null         # cap per split (the corpus is cut there)
    max_val_tokens: 1000000
    # knobs: chunk_chars (text-file piece size, 65536; ids do not depend on it, but the held-out
    # boundary does, so it is part of the cache key), flush_tokens (progress-save period, 4Mi tokens),
    # tokenize_batch_chars (characters per tokenizer call, 1Mi)

Output: ``<cache_dir>/tokenized/<name>-<key>/{train,val}.bin`` and ``manifest.json`` (tokenizer,
source, token and document counts, sha256 of each file, dtype, throughput). ``key`` hashes everything
that determines the bytes, so changing the source, tokenizer or caps makes a new cache.

Robustness: progress is saved (atomically: temp file + rename) every ``flush_tokens`` tokens
together with the number of source pieces consumed, so an interrupted run resumes where it stopped
instead of restarting; a split's file only gets its final name once complete, and the manifest is
written last. A lock file keeps two concurrent runs from writing the same cache. Plain-text files are
cut into pieces where pre-tokenizers always split, so the ids equal a whole-file encoding (tested
for T5 and GPT-2). Held-out validation
comes from the *front* of the train stream, which the train split then skips (for a single plain-text
file that can put the rest of the first book into train: different text, same book).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from soapbench.data.cache import atomic_write_json, cache_key, file_sha256, locked, plain
from soapbench.data.errors import DataError
from soapbench.data.text_sources import HubTextSource, LocalTextSource, Piece, TextSource, resolve_paths
from soapbench.data.text_tokenizers import TextTokenizer, load_tokenizer
from soapbench.data.tokens import TokenSplits

FORMAT_VERSION = 1
SOURCE_KEYS = {"train", "val", "text_field", "hub", "hub_config", "train_split", "val_split", "revision"}
DEFAULT_FLUSH_TOKENS = 1 << 22
BATCH_CHARS = 1 << 20
BATCH_PIECES = 1024


def _optional_int(cfg: Mapping[str, Any], key: str) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or value <= 0:
        raise DataError(f"data.{key}: {value!r} must be a positive integer or null")
    return value


def build_sources(cfg: Mapping[str, Any], data_root: Path) -> tuple[TextSource, TextSource | None]:
    """(train source, val source or None when validation is to be held out of the train stream)."""
    source = cfg.get("source")
    if not isinstance(source, Mapping):
        raise DataError("data.source: missing; give source.train (local files) or source.hub (a Hugging Face dataset)")
    unknown = sorted(set(source) - SOURCE_KEYS)
    if unknown:
        raise DataError(f"data.source.{unknown[0]}: unknown key; valid: {', '.join(sorted(SOURCE_KEYS))}")
    text_field = source.get("text_field") or "text"
    chunk_chars = int(cfg.get("chunk_chars") or 1 << 16)
    if source.get("train"):
        train = LocalTextSource(
            resolve_paths(source["train"], data_root, "data.source.train"), "data.source.train", text_field, chunk_chars
        )
        val = None
        if source.get("val"):
            val = LocalTextSource(
                resolve_paths(source["val"], data_root, "data.source.val"), "data.source.val", text_field, chunk_chars
            )
        return train, val
    if not source.get("hub"):
        raise DataError("data.source: give source.train (local files) or source.hub (a Hugging Face dataset)")
    if source.get("val"):
        raise DataError("data.source.val: a local val file needs a local source.train too")
    common = dict(
        name=str(source["hub"]), config=source.get("hub_config"), text_field=text_field, revision=source.get("revision")
    )
    train = HubTextSource(split=source.get("train_split") or "train", key="data.source.hub", **common)
    val_split = source.get("val_split")
    return train, (HubTextSource(split=val_split, key="data.source.hub", **common) if val_split else None)


def _batches(pieces: Iterator[Piece], batch_chars: int) -> Iterator[list[Piece]]:
    batch: list[Piece] = []
    chars = 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece[0])
        if chars >= batch_chars or len(batch) >= BATCH_PIECES:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenize_split(
    split: str,
    source: TextSource,
    tokenizer: TextTokenizer,
    out_dir: Path,
    dtype: np.dtype,
    skip_pieces: int = 0,
    max_tokens: int | None = None,
    flush_tokens: int = DEFAULT_FLUSH_TOKENS,
    batch_chars: int = BATCH_CHARS,
) -> dict[str, Any]:
    """Write ``<split>.bin`` (resuming a partial one) and return its record: tokens, documents, pieces, sha256."""
    final, partial = out_dir / f"{split}.bin", out_dir / f"{split}.bin.partial"
    progress_path = out_dir / f"{split}.progress.json"
    itemsize = np.dtype(dtype).itemsize
    state = {"tokens": 0, "pieces": 0, "documents": 0, "done": False}
    if progress_path.exists():
        saved = json.loads(progress_path.read_text())
        if saved.get("done") and final.exists():
            return saved
        if partial.exists() and partial.stat().st_size >= saved["tokens"] * itemsize:
            state = saved
    resumed = state["tokens"]
    started = time.perf_counter()
    with open(partial, "r+b" if partial.exists() else "wb") as handle:
        # Whatever was written after the last saved progress is dropped and re-tokenized.
        handle.truncate(state["tokens"] * itemsize)
        handle.seek(0, os.SEEK_END)
        bar = tqdm(total=max_tokens, initial=state["tokens"], unit="tok", unit_scale=True, desc=f"tokenize {split}")
        unflushed = 0
        done = False
        for batch in _batches(source.pieces(skip_pieces + state["pieces"]), batch_chars):
            encoded = tokenizer.encode_batch([text for text, _ in batch])
            parts: list[np.ndarray] = []
            count = 0
            for (_, ends), ids in zip(batch, encoded):
                ids = ids + [tokenizer.eos_id] if ends else ids
                if max_tokens is not None and state["tokens"] + count + len(ids) >= max_tokens:
                    ids = ids[: max_tokens - state["tokens"] - count]
                    done = True
                parts.append(np.asarray(ids, dtype=dtype))
                count += len(ids)
                state["pieces"] += 1
                state["documents"] += int(ends)
                if done:
                    break
            if count:
                handle.write(np.concatenate(parts).tobytes())
            state["tokens"] += count
            unflushed += count
            bar.update(count)
            if unflushed >= flush_tokens:
                handle.flush()
                os.fsync(handle.fileno())
                atomic_write_json(progress_path, state)
                unflushed = 0
            if done:
                break
        bar.close()
        handle.flush()
        os.fsync(handle.fileno())
    if state["tokens"] == 0:
        raise DataError(
            f"{getattr(source, 'key', 'data.source')}: {source.description} produced no tokens; point it at a file with text"
        )
    seconds = time.perf_counter() - started
    state.update(
        done=True,
        sha256=file_sha256(partial),
        file=final.name,
        seconds=round(seconds, 3),
        tokens_per_second=round((state["tokens"] - resumed) / max(seconds, 1e-9), 1),
        resumed_from_tokens=resumed,
    )
    os.replace(partial, final)
    atomic_write_json(progress_path, state)
    return state


def _open_splits(out_dir: Path, manifest: Mapping[str, Any], verify_checksum: bool) -> TokenSplits:
    arrays = {}
    for split in ("train", "val"):
        record = manifest["splits"][split]
        path = out_dir / record["file"]
        expected = record["tokens"] * np.dtype(manifest["dtype"]).itemsize
        if not path.exists() or path.stat().st_size != expected:
            raise DataError(f"tokenized cache {path} is missing or truncated; delete {out_dir} to re-tokenize")
        if verify_checksum and file_sha256(path) != record["sha256"]:
            raise DataError(f"tokenized cache {path} fails its sha256 check; delete {out_dir} to re-tokenize")
        arrays[split] = np.memmap(path, dtype=manifest["dtype"], mode="r", shape=(record["tokens"],))
    meta = {
        "cache_dir": str(out_dir),
        "source": manifest["source"],
        "tokenizer": manifest["tokenizer"],
        "eos_id": manifest["eos_id"],
        "dtype": manifest["dtype"],
        "val_held_out": manifest["val_held_out"],
        **{f"{s}_tokens": manifest["splits"][s]["tokens"] for s in ("train", "val")},
        **{f"{s}_sha256": manifest["splits"][s]["sha256"] for s in ("train", "val")},
    }
    return TokenSplits(train=arrays["train"], val=arrays["val"], vocab_size=manifest["vocab_size"], meta=meta)


def load_token_splits(data_cfg: Mapping[str, Any], data_root: Path, cache_dir: Path) -> TokenSplits:
    """Tokenize (once, resumably) the corpus ``data_cfg`` describes and memory-map its train/val token files."""
    cfg = plain(data_cfg)
    data_root, cache_dir = Path(data_root), Path(cache_dir)
    name = str(cfg.get("name") or "tokenized")
    train_source, val_source = build_sources(cfg, data_root)
    tokenizer = load_tokenizer(cfg.get("tokenizer"), data_root)
    declared = cfg.get("vocab_size")
    if declared is not None and declared != tokenizer.vocab_size:
        raise DataError(
            f"data.vocab_size: {declared} does not match the tokenizer's {tokenizer.vocab_size} "
            f"({tokenizer.identity}); set data.vocab_size: {tokenizer.vocab_size} or use the intended tokenizer"
        )
    max_train, max_val = _optional_int(cfg, "max_train_tokens"), _optional_int(cfg, "max_val_tokens")
    if val_source is None and max_val is None:
        raise DataError(
            "data.max_val_tokens: needed to hold out a validation split from the train stream (no val source given)"
        )
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    identity = {
        "format_version": FORMAT_VERSION,
        "train_source": train_source.identity(),
        "val_source": val_source.identity() if val_source else "held out of the train stream",
        "tokenizer": tokenizer.identity,
        "eos_id": tokenizer.eos_id,
        "max_train_tokens": max_train,
        "max_val_tokens": max_val,
        "dtype": dtype.name,
    }
    out_dir = cache_dir / "tokenized" / f"{name}-{cache_key(identity)}"
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.exists():
        for source in (train_source, val_source):
            if source is not None:
                source.ensure_available()  # before any file is created or a progress bar drawn
        out_dir.mkdir(parents=True, exist_ok=True)
        with locked(out_dir):
            if not manifest_path.exists():  # another process may have finished it while we waited
                knobs = {
                    "flush_tokens": int(cfg.get("flush_tokens") or DEFAULT_FLUSH_TOKENS),
                    "batch_chars": int(cfg.get("tokenize_batch_chars") or BATCH_CHARS),
                }
                splits = {}
                if val_source is None:
                    splits["val"] = tokenize_split("val", train_source, tokenizer, out_dir, dtype, 0, max_val, **knobs)
                    skip = splits["val"]["pieces"]
                    splits["train"] = tokenize_split(
                        "train", train_source, tokenizer, out_dir, dtype, skip, max_train, **knobs
                    )
                else:
                    splits["val"] = tokenize_split("val", val_source, tokenizer, out_dir, dtype, 0, max_val, **knobs)
                    splits["train"] = tokenize_split(
                        "train", train_source, tokenizer, out_dir, dtype, 0, max_train, **knobs
                    )
                manifest = {
                    "name": name,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "source": {
                        "train": train_source.description,
                        "val": val_source.description if val_source else None,
                    },
                    "val_held_out": val_source is None,
                    "vocab_size": tokenizer.vocab_size,
                    "splits": splits,
                    **identity,
                }
                atomic_write_json(manifest_path, manifest)
    manifest = json.loads(manifest_path.read_text())
    return _open_splits(out_dir, manifest, bool(cfg.get("verify_checksum", False)))
