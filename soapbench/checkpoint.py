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

The run's own counters are a :class:`RunState`, stored under the checkpoint's ``state`` key as the plain
dict it always was; :func:`resume_run` puts a run back where its checkpoint left it.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soapbench.errors import ConfigError, SoapbenchError
from soapbench.identity import RunIdentity, describe_differences
from soapbench.results import METRICS_FILE, PREVIOUS_CHECKPOINT_FILE, RunStore, atomic_write_bytes, utc_now

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
        shown = "; ".join(item.lstrip(".") for item in changed[:2]) + (
            f"; and {len(changed) - 2} more" if len(changed) > 2 else ""
        )
        raise ConfigError(
            f"resume: {path} holds tensors in other dtypes than this run's ({shown}), so it was converted after it "
            "was written; restore it from a backup, or delete it to resume from the previous checkpoint or start over"
        )


@dataclass
class LogWindow:
    """The current log window's sums: checkpointed, so a resume at any step logs what an uninterrupted run logs."""

    loss: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    optimizer_seconds: float = 0.0
    items: int = 0


@dataclass
class RunState:
    """A run's counters and headline numbers: what the checkpoint's ``state`` holds beside the state dicts."""

    step: int = 0
    train_seconds: float = 0.0
    optimizer_seconds: float = 0.0
    tokens: int = 0
    samples: int = 0
    # Records in metrics.jsonl up to this step: a resume drops the ones logged after its checkpoint.
    metric_records: int = 0
    initial_loss: float | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    final_val_metrics: dict[str, float] = field(default_factory=dict)
    final_full_val_loss: float | None = None
    final_full_val_metrics: dict[str, float] = field(default_factory=dict)
    final_full_eval_seconds: float | None = None
    # One entry per process that trained the run (``soapbench.machine_load``), updated in place.
    segments: list[dict[str, Any]] = field(default_factory=list)
    wandb_run_id: str | None = None
    started_at: str | None = None
    log_window: LogWindow = field(default_factory=LogWindow)

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's ``state``: a plain dict (what older versions wrote and read), keys in field order."""
        saved = {item.name: getattr(self, item.name) for item in fields(self)}
        saved["log_window"] = {item.name: getattr(self.log_window, item.name) for item in fields(LogWindow)}
        return saved

    @classmethod
    def from_checkpoint(cls, saved: Mapping[str, Any], defaults: RunState) -> RunState:
        """``defaults`` with what the checkpoint holds; a key an older checkpoint lacks keeps its default."""
        known = {item.name for item in fields(cls)}
        values = {key: value for key, value in saved.items() if key in known}
        if "log_window" in values:
            window_keys = {item.name for item in fields(LogWindow)}
            values["log_window"] = LogWindow(**{k: v for k, v in values["log_window"].items() if k in window_keys})
        return replace(defaults, **values)


@dataclass
class ResumedRun:
    state: RunState
    # Set when the summary should say where the run came from: resume=<path>, or another identity allowed.
    resumed_from: dict[str, Any] | None
    # Failure records to add to the summary's: the unreadable checkpoints skipped over.
    failures: list[dict[str, Any]]
    # The records metrics.jsonl lost before the checkpoint (a damaged log), if any.
    metrics_gap: dict[str, Any] | None


def resume_run(
    candidates: list[Path], step: Any, fresh: RunState, identity: RunIdentity, *, run_dir: Path,
    max_steps: int, allow_other_identity: bool, explicit: bool, rank: int, is_main: bool,
) -> ResumedRun:  # fmt: skip
    """Load the first readable checkpoint of ``candidates`` into ``step`` (a ``soapbench.training_step.TrainStep``),
    restore this rank's RNG, and (on rank 0) cut the run's metrics log back to the checkpoint's records."""
    loaded = load_for_resume(candidates, identity, allow_other_identity=allow_other_identity, explicit=explicit)
    failures = []
    for bad_path, reason in loaded.unreadable:
        if is_main:
            print(
                f"warning: {bad_path} is unreadable ({reason}); resuming from {loaded.path}",
                file=sys.stderr,
                flush=True,
            )
            bad_path.replace(
                bad_path.with_name(bad_path.name + ".unreadable")
            )  # kept for inspection, out of the rotation
        failures.append(
            {"status": "interrupted", "error": f"unreadable checkpoint {bad_path} ({reason})", "at": utc_now()}
        )
    checkpoint = loaded.payload
    if checkpoint["state"]["step"] > max_steps:
        raise ConfigError(
            f"resume: {loaded.path} is at step {checkpoint['state']['step']}, past trainer.max_steps={max_steps}; "
            "raise trainer.max_steps or resume an earlier checkpoint"
        )
    resumed_from = None
    if explicit or loaded.identity_differences:
        resumed_from = {"checkpoint": str(loaded.path), "step": checkpoint["state"]["step"],
                        "identity_differences": loaded.identity_differences}  # fmt: skip
    step.load_state_dicts(checkpoint)
    live = step.state_dicts()
    refuse_changed_dtypes(
        loaded.path,
        {"model": checkpoint["model"], "optimizer": checkpoint["optimizer"], "ema": checkpoint.get("ema")},
        {"model": live["model"], "optimizer": live["optimizer"], "ema": live["ema"]},
    )
    state = RunState.from_checkpoint(checkpoint["state"], fresh)
    restore_rng_state(checkpoint["rng_per_rank"][rank % len(checkpoint["rng_per_rank"])])
    gap = None
    if is_main:
        store = RunStore(run_dir)
        source_metrics = loaded.path.parent / METRICS_FILE
        if loaded.path.parent.resolve() != Path(run_dir).resolve() and source_metrics.is_file():
            shutil.copyfile(source_metrics, store.metrics_path)  # the log up to the checkpoint comes with it
        kept = store.truncate_metrics(state.metric_records)
        if len(kept) < state.metric_records:
            gap = _metrics_gap(store, kept, state)
            state.metric_records = len(kept)  # counts the log as it now is (rank 0's state is checkpointed)
        print(f"{run_dir}: resuming from step {state.step} ({loaded.path.name})", flush=True)
    return ResumedRun(state, resumed_from, failures, gap)


def _metrics_gap(store: RunStore, kept: list[dict[str, Any]], state: RunState) -> dict[str, Any]:
    """Say (one line) and record that metrics.jsonl lost records its checkpoint counted: they cannot be remade."""
    after_step = kept[-1]["step"] if kept else None
    gap = {"records_expected": state.metric_records, "records_found": len(kept), "after_step": after_step,
           "until_step": state.step, "at": utc_now()}  # fmt: skip
    print(
        f"warning: {store.metrics_path} holds {len(kept)} of the {state.metric_records} records logged up to "
        f"step {state.step} (cut short or damaged); the records after step {after_step} are lost, training "
        "resumes, and summary.json marks the gap under metrics_gaps",
        file=sys.stderr,
        flush=True,
    )
    return gap


def save_run_checkpoint(path: Path, step: Any, state: RunState, rng_per_rank: list[dict[str, Any]],
                        identity: RunIdentity) -> None:  # fmt: skip
    """The run's checkpoint: ``step``'s state dicts (a ``TrainStep``), its counters, every rank's RNG, its identity."""
    save_checkpoint(path, {**step.state_dicts(), "state": state.to_checkpoint(), "rng_per_rank": rng_per_rank,
                           "identity": identity.as_record()})  # fmt: skip
