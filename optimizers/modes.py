"""Optimizers with train and eval modes: Schedule-Free, iterate averaging (GPA in Distributed Shampoo), SPlus.

Such an optimizer keeps the weights a gradient is taken at (``y``) in the parameters while training, and moves
them to the weights to evaluate (``x``, an average) on ``optimizer.eval()``; ``optimizer.train()`` moves them back.
An optimizer evaluated without the switch is evaluated at the wrong weights, silently. torch.optim's own
optimizers have no modes, so an optimizer "has modes" when it has callable ``train`` and ``eval`` methods; a
:class:`~soapbench.optimizers.composite.CompositeOptimizer` switches every child that has them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

Mode = Literal["train", "eval"]


def has_modes(optimizer: torch.optim.Optimizer) -> bool:
    children = getattr(optimizer, "optimizers", None)
    if isinstance(children, dict):
        return any(has_modes(child) for child in children.values())
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def set_mode(optimizer: torch.optim.Optimizer, mode: Mode) -> None:
    """``optimizer.train()`` or ``.eval()`` where it has modes (each child of a composite); nothing otherwise."""
    children = getattr(optimizer, "optimizers", None)
    if isinstance(children, dict):
        for child in children.values():
            set_mode(child, mode)
    elif has_modes(optimizer):
        getattr(optimizer, mode)()


@contextlib.contextmanager
def evaluation_weights(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """The model in eval mode at the optimizer's evaluation weights; training mode and weights restored after."""
    model.eval()
    set_mode(optimizer, "eval")
    try:
        yield
    finally:
        set_mode(optimizer, "train")
        model.train()
