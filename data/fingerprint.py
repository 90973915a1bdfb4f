"""Fingerprints of the data a run actually reads, for its identity (see ``soapbench.identity``).

A fingerprint hashes what the model sees — token ids, decoded image arrays — never where the
files live, so the same corpus gives the same run on any machine and another corpus another run.
Large cached arrays are hashed once: the digest is remembered beside the file, keyed by its size
and modification time, and recomputed only if either changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from soapbench.data.cache import file_sha256

_BLOCK = 1 << 24


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (memory-mapped arrays are read in blocks)."""
    digest = hashlib.sha256(f"{array.dtype.str}{tuple(array.shape)}".encode())
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8) if array.size else np.zeros(0, np.uint8)
    for start in range(0, flat.size, _BLOCK):
        digest.update(flat[start : start + _BLOCK].tobytes())
    return digest.hexdigest()


def cached_file_sha256(path: Path) -> str:
    """sha256 of a file, remembered in ``.<name>.sha256.json`` beside it (skipped if not writable)."""
    path = Path(path)
    stat = path.stat()
    key = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo = path.with_name(f".{path.name}.sha256.json")
    try:
        saved = json.loads(memo.read_text())
        if {k: saved.get(k) for k in key} == key:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = file_sha256(path)
    tmp = memo.with_name(memo.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({**key, "sha256": digest}))
        os.replace(tmp, memo)
    except OSError:  # a read-only cache: hash again next time
        tmp.unlink(missing_ok=True)
    return digest


def token_fingerprint(train: np.ndarray, val: np.ndarray, vocab_size: int, meta: dict[str, Any]) -> dict[str, Any]:
    """Tokenized caches carry their shards' sha256 (computed when written); in-memory streams are hashed here."""
    hashes = {}
    for split, tokens in (("train", train), ("val", val)):
        hashes[f"{split}_sha256"] = meta.get(f"{split}_sha256") or array_sha256(np.asarray(tokens))
    return {
        "kind": "tokens",
        "vocab_size": int(vocab_size),
        "train_tokens": len(train),
        "val_tokens": len(val),
        **hashes,
    }
