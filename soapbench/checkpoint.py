"""Checkpoints that let a killed run finish exactly as if it had never stopped.

A checkpoint holds everything the next step depends on: model, optimizer, scheduler,
gradient scaler and EMA state, every RNG (python, numpy, torch CPU and CUDA), the
step counter (batches are a pure function of it), the cumulative clocks and how many
metric records had been logged, so records written after it can be dropped on resume.
It is written to a temp file and renamed, so a kill mid-write leaves the previous one.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soapbench.results import atomic_write_bytes


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
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    # Our own files: they hold RNG tuples and numpy arrays, which the weights-only loader rejects.
    return torch.load(path, map_location="cpu", weights_only=False)
