"""What every optimizer in the suite shares about ``step()``: the closure, the parameters that have a gradient,
and the learning rate as torch.optim accepts it (a float or a 1-element tensor)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor


def closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss of ``closure`` evaluated with autograd on (``step`` itself runs under ``no_grad``), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grads(optimizer: torch.optim.Optimizer) -> Iterator[tuple[dict, Tensor]]:
    """(group, param) for every parameter that has a gradient, in group order; a sparse gradient is an error."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")
            yield group, param


def check_lr(lr: float | Tensor) -> None:
    """torch.optim's rule for ``lr``: a number or a 1-element tensor (any shape), and here also > 0."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")


def group_lr(group: dict[str, Any]) -> float:
    """The group's lr as a Python number, read at every step: a tensor lr (which LR schedulers update in place)
    gives exactly the trajectory of the float it holds, whatever its shape."""
    lr = group["lr"]
    return lr.item() if isinstance(lr, Tensor) else lr
