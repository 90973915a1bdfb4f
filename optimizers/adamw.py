"""AdamW: torch's own implementation (Loshchilov & Hutter, 2019).

    t ← t + 1
    W ← W·(1 − ηλ)                                   (decoupled, before the update)
    m ← β1 m + (1 − β1) G
    v ← β2 v + (1 − β2) G²
    W ← W − η/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + ε)

torch picks the foreach path on CPU and may be asked for the fused kernel on GPU
(``fused=True``); both compute the same math as the single-tensor loop.
"""

from __future__ import annotations

import torch

from soapbench.optimizers.registry import register_optimizer
from soapbench.optimizers.stepping import check_lr


@register_optimizer("adamw")
def AdamW(
    params,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    validate_adam_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return torch.optim.AdamW(
        params,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        foreach=foreach,
        fused=fused,
    )


def validate_adam_hyperparameters(*, lr: float, betas, eps: float, weight_decay: float) -> None:
    """Shared checks with messages that name the field; raise ValueError."""
    check_lr(lr)
    betas = tuple(betas)
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{index}] must be in [0, 1), got {beta}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
