"""Token streams for language-model workloads: a train and a validation split of token ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TokenSplits:
    """``train`` and ``val`` are 1-D integer arrays (in memory or np.memmap), never modified."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    # Provenance for the run record: source, tokenizer, checksum, token counts.
    meta: dict[str, Any] = field(default_factory=dict)
