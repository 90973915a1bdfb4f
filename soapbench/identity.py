"""A run's identity: everything that changes what it computes, and nothing that does not.

The identity is the resolved ``optimizer``, ``model``, ``data``, ``trainer`` and ``seed``
config plus a fingerprint of the data actually read (hashes of the token streams or of the
decoded images), flattened to dotted keys. Machine-specific things stay out: paths (where
the data, results and caches live), the device, logging. Its hash names the run directory,
so the same config on the same data finds the same run, and another dataset (a different
``paths.data_root``) finds another; it is stored in ``summary.json`` and in every checkpoint,
so a resume or a skip can prove that the stored result belongs to the config asking for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IDENTITY_SECTIONS = ("optimizer", "model", "data", "trainer", "seed")
# Keys inside those sections that change how a run is executed or stored, never what it computes.
NON_IDENTITY_KEYS = (
    "trainer.stop_after_steps",  # stopping early in this process
    "trainer.share_refreshes",  # spreading refreshes over ranks: bit-identical
    "trainer.threads",  # the same computation (float results may round differently)
    "trainer.parallel_jobs",
    "trainer.checkpoint_interval",
    "trainer.keep_final_checkpoint",
    "data.download",  # how the file got there; the fingerprint covers what it holds
    "data.url",
)
# Options added later: when off (None) they are left out, so runs made before them keep their identity.
# (Not trainer.final_eval_batches: runs made before it lack the whole-split numbers, so none may stand in for a new one.)
OMITTED_WHEN_OFF = ("trainer.grad_clip_norm_per_tensor", "trainer.loss_scale_factor")
# Bumped when the identity's recipe changes, so old and new runs never share a directory by accident.
IDENTITY_VERSION = 2


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        if not value:
            out[prefix] = {}
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = [_plain(v) for v in value]
    else:
        out[prefix] = value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class RunIdentity:
    # Dotted key -> value, e.g. {"optimizer.lr": 0.001, "data_fingerprint.train_sha256": "…"}.
    fields: dict[str, Any]

    @property
    def hash(self) -> str:
        payload = json.dumps({"version": IDENTITY_VERSION, **self.fields}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    def as_record(self) -> dict[str, Any]:
        return {"hash": self.hash, "version": IDENTITY_VERSION, "fields": self.fields}

    def differing_keys(self, other: Mapping[str, Any] | None) -> list[str]:
        """Keys whose values differ from a stored ``as_record()`` (all keys when it has none)."""
        theirs = (other or {}).get("fields")
        if not isinstance(theirs, Mapping):
            return ["(no identity recorded: written by an older soapbench)"]
        mine = json.loads(json.dumps(self.fields, default=str))  # compare as stored (tuples -> lists)
        differing = [k for k in set(mine) | set(theirs) if mine.get(k, "<absent>") != theirs.get(k, "<absent>")]
        # Most telling first: a changed name, then changed values, then keys only one side has.
        return sorted(differing, key=lambda k: (not k.endswith(".name"), not (k in mine and k in theirs), k))


def run_identity(cfg: Mapping[str, Any], data_fingerprint: Mapping[str, Any]) -> RunIdentity:
    fields: dict[str, Any] = {}
    for section in IDENTITY_SECTIONS:
        _flatten(cfg.get(section), section, fields)
    for key in NON_IDENTITY_KEYS:
        fields.pop(key, None)
    for key in OMITTED_WHEN_OFF:
        if fields.get(key, 0) is None:
            del fields[key]
    _flatten(dict(data_fingerprint), "data_fingerprint", fields)
    return RunIdentity(fields)


def describe_differences(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
