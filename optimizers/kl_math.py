"""KL-Shampoo's and KL-SOAP's factor arithmetic (:mod:`soapbench.optimizers.kl`), shared by the per-parameter step
and the per-shape one: the working shape, the factor EMA with the reference's rounding, and the clamped eigenvalue
EMA. Pure functions of tensors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from soapbench.optimizers.linalg import SYMMETRIC_BLOCK, gram_update_


def working_shape(param_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape KL's factors act on: squeezed as the reference does; 4-D and up → (d_1, d_2, d_3·…·d_n).

    A result of length 1 means the diagonal path (0-D and 1-D after the squeeze).
    """
    squeezed = [size for size in param_shape if size != 1]
    if len(squeezed) <= 1:
        return (math.prod(param_shape),)
    if len(squeezed) > 3:
        return (squeezed[0], squeezed[1], math.prod(squeezed[2:]))
    return tuple(squeezed)


def accumulate_factor(factor: Tensor, contribution: Tensor, beta: float, numel: int) -> None:
    """``S ← β S + (1−β)/c · contribution`` with c = N/d, with the reference's operations (and rounding).

    ``factor`` may be one d×d factor or a stack of them (``B×d×d``, the per-shape step)."""
    factor.mul_(beta).add_(contribution, alpha=(1.0 - beta) / (numel / factor.shape[-1]))


def accumulate_gram(factor: Tensor, rows: Tensor, beta: float, numel: int) -> None:
    """:func:`accumulate_factor` with ``contribution = rows rowsᵀ``, for one factor or a stack of them.

    Factors narrower than ``2·SYMMETRIC_BLOCK`` use the reference's ops (a stack as one batched product). Wider
    factors use one fused update by symmetric blocks (``linalg.gram_update_``), which needs about 5/8 of the
    product's flops at 1536 wide and rounds slightly differently; a stack of them is updated factor by factor, so
    each rounds as it would alone.
    """
    size = factor.shape[-1]
    if size < 2 * SYMMETRIC_BLOCK:
        accumulate_factor(factor, rows @ rows.mT, beta, numel)
    elif factor.dim() == 3:
        for one_factor, one_rows in zip(factor.unbind(0), rows.unbind(0)):
            gram_update_(one_factor, one_rows, beta=beta, alpha=(1.0 - beta) / (numel / size))
    else:
        gram_update_(factor, rows, beta=beta, alpha=(1.0 - beta) / (numel / size))


def updated_inv_sqrt_eigenvalues(
    inv_sqrt_eigenvalues: Tensor, new_term: Tensor, beta: float, clamp_max: int | None, damping_shift: Tensor | None
) -> Tensor:
    """``D ← β D + (1−β) new_term`` on D = s^{-2}, returned as the clamped s = D^{-1/2}.

    NaN and ±inf become 0 both ways, as in the reference: a direction whose D reaches 0 gets s = 0 (no step)
    rather than an infinite one.
    """
    if damping_shift is not None:
        new_term = new_term + damping_shift
    eigenvalues = (1.0 / inv_sqrt_eigenvalues**2).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    eigenvalues.lerp_(new_term, 1.0 - beta)
    updated = (1.0 / torch.sqrt(eigenvalues)).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    if clamp_max is not None:
        updated = torch.clamp(updated, max=clamp_max)
    return updated
