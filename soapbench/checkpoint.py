"""Checkpoints that let a killed run finish exactly as if it had never stopped.

A checkpoint holds everything the next step depends on: model, optimizer, scheduler,
gradient scaler and EMA state, every RNG (python, numpy, torch CPU and CUDA), the
step counter (batches are a pure function of it), the cumulative clocks and how many
metric records had been logged, so records written after it can be dropped on resume.
It is written to a temp file and renamed, so a kill mid-write leaves the previous one, and the
checkpoint it replaces is kept as ``checkpoint.prev.pt``: if the latest cannot be read (a
truncated file, a bad disk), the run resumes from the one before and says which file was bad.
Each checkpoint records the run's identity, so a resume from another run's checkpoint is refused, and
its tensors must come back in the dtypes the run keeps them in: ``load_state_dict`` would silently
cast a checkpoint whose tensors were converted (say to bfloat16) and the run would end ``completed``
under its identity with other weights, so that is refused too (:func:`refuse_changed_dtypes`).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from soapbench.errors import ConfigError, SoapbenchError
from soapbench.identity import RunIdentity, describe_differences
from soapbench.results import PREVIOUS_CHECKPOINT_FILE, atomic_write_bytes

# What torch.load raises for a file that is not a whole checkpoint.
UNREADABLE = (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` must hold ``rng_per_rank``: every process's ``rng_state()``, in rank order."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(path)
    if path.is_file():
        # A kill between the two renames leaves only the previous checkpoint, which resume falls back to.
        os.replace(path, path.with_name(PREVIOUS_CHECKPOINT_FILE))
    atomic_write_bytes(path, buffer.getvalue())


# Beyond tensors and plain containers a checkpoint holds numpy's RNG state (a uint32 array); the
# weights-only loader admits these and nothing else, so a crafted file cannot run code when it is read.
# numpy 2 moved ``numpy.core`` to ``numpy._core``: a checkpoint names the function as its writer's numpy did.
_reconstruct = np.ndarray(0).__reduce__()[0]
CHECKPOINT_GLOBALS = [
    (_reconstruct, "numpy.core.multiarray._reconstruct"), (_reconstruct, "numpy._core.multiarray._reconstruct"),
    (np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype"), (type(np.dtype(np.uint32)), "numpy.dtypes.UInt32DType"),
]  # fmt: skip


class UnsafeCheckpointError(ConfigError):
    """A checkpoint that needs more than a checkpoint holds to load: refused, never unpickled, never skipped."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        _refuse_foreign_objects(path)
        # Damaged: torch's message is mostly advice to load it unsafely; its last line is the diagnosis.
        detail = str(error).rpartition("WeightsUnpickler error:")[2].strip().split("\n")[0]
        raise pickle.UnpicklingError(f"damaged or not a checkpoint ({detail})") from None
    if not isinstance(checkpoint, dict) or not {"model", "optimizer", "state"} <= set(checkpoint):
        raise ValueError("not a soapbench checkpoint")
    return checkpoint


def _refuse_foreign_objects(path: Path) -> None:
    """Raise if ``path`` names objects beyond ``CHECKPOINT_GLOBALS``; return if it is merely damaged."""
    allowed = {name for _, name in CHECKPOINT_GLOBALS}
    try:
        # Reads the pickle's opcodes without executing any of them.
        foreign = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed)
    except UNREADABLE:
        return
    if foreign:
        raise UnsafeCheckpointError(
            f"resume: {path} is not a soapbench checkpoint: loading it would call {', '.join(foreign[:3])}, "
            "which no checkpoint holds, so it was not loaded; resume from a checkpoint soapbench wrote, or delete this one"
        )


@dataclass
class LoadedCheckpoint:
    payload: dict[str, Any]
    path: Path
    # Checkpoints tried before it that could not be read, each with the reason.
    unreadable: list[tuple[Path, str]]
    # Identity keys in which it differs from this run (only with allow_other_identity).
    identity_differences: list[str]


def load_for_resume(
    candidates: list[Path], identity: RunIdentity, *, allow_other_identity: bool, explicit: bool = False
) -> LoadedCheckpoint:
    """The first readable checkpoint of ``candidates`` whose identity is this run's.

    Unreadable files are skipped (named in ``unreadable``); none readable is a one-line error naming
    them. A checkpoint of another config is refused with the differing keys unless allowed.
    """
    unreadable = []
    for path in candidates:
        try:
            payload = load_checkpoint(path)
        except UnsafeCheckpointError:
            raise  # a crafted file is the user's to look at, not a damaged one to skip
        except UNREADABLE as error:
            first_sentence = str(error).split(". ")[0].splitlines()[0][:160] if str(error) else ""
            unreadable.append((path, f"{type(error).__name__}: {first_sentence}".rstrip(": ")))
            continue
        differing = identity.differing_keys(payload.get("identity"))
        if differing and not allow_other_identity:
            raise ConfigError(
                f"resume: {path} is a checkpoint of a different config (differs in {describe_differences(differing)}); "
                "resume a run of this config, or pass allow_identity_mismatch=true to start from it anyway"
            )
        return LoadedCheckpoint(payload, Path(path), unreadable, differing)
    bad = "; ".join(f"{path} ({reason})" for path, reason in unreadable)
    fix = "resume= another checkpoint" if explicit else "delete it to start the run over, or restore it from a backup"
    raise SoapbenchError(f"checkpoint unreadable: {bad}; {fix}")


def _dtype_differences(saved: Any, live: Any, where: str) -> Iterator[str]:
    if isinstance(saved, torch.Tensor) and isinstance(live, torch.Tensor):
        if saved.dtype != live.dtype:
            yield f"{where} is {str(saved.dtype).removeprefix('torch.')}, the run keeps {str(live.dtype).removeprefix('torch.')}"
    elif isinstance(saved, Mapping) and isinstance(live, Mapping):
        for key in saved.keys() & live.keys():
            yield from _dtype_differences(saved[key], live[key], f"{where}.{key}")
    elif isinstance(saved, (list, tuple)) and isinstance(live, (list, tuple)) and len(saved) == len(live):
        for index, (saved_item, live_item) in enumerate(zip(saved, live)):
            yield from _dtype_differences(saved_item, live_item, f"{where}[{index}]")


def refuse_changed_dtypes(path: Path, saved: Mapping[str, Any], live: Mapping[str, Any]) -> None:
    """Call after loading: ``saved`` as read from ``path`` and ``live`` the run's state dicts after the load
    (each under the same key, e.g. model and optimizer). A tensor whose dtype differs was converted after the
    checkpoint was written (the run writes what it keeps); loading it has rounded the run's state."""
    changed = sorted(_dtype_differences(saved, live, ""))
    if changed:
        shown = "; ".join(item.lstrip(".") for item in changed[:2]) + (f"; and {len(changed) - 2} more" if len(changed) > 2 else "")
        raise ConfigError(
            f"resume: {path} holds tensors in other dtypes than this run's ({shown}), so it was converted after it "
            "was written; restore it from a backup, or delete it to resume from the previous checkpoint or start over"
        )
