"""The part of ``step()`` every optimizer in the suite shares: the closure, and the parameters that have a gradient."""

from __future__ import annotations

from typing import Callable, Iterator

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
