"""What the trainer does to the gradients between backward and ``optimizer.step()``: loss scaling and clipping.

Loss scaling: fp16 runs use torch's dynamic ``GradScaler`` unless ``trainer.loss_scale_factor`` sets a static
scale (the SOAP card's ``loss_scale_factor``; any precision): every micro-batch loss is multiplied by it before
backward and the gradients are divided by it before clipping, so the step sees the true gradient. A power of
two (the usual choice) makes both exact.

Clipping, in the order Keras applies the SOAP card's options: per tensor (``grad_clip_norm_per_tensor``, the
card's ``clipnorm``: each parameter's gradient rescaled to at most this L2 norm) or globally
(``grad_clip_norm``, the card's ``global_clipnorm``: all gradients rescaled together), then elementwise
(``grad_clip_value``, the card's ``clipvalue``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


def build_grad_scaler(trainer: Any, device: torch.device) -> torch.amp.GradScaler:
    """The dynamic fp16 scaler, disabled for other precisions and when a static ``loss_scale_factor`` is set."""
    dynamic = trainer.precision == "fp16" and trainer.loss_scale_factor is None
    return torch.amp.GradScaler(device.type, enabled=dynamic)


def scale_loss(loss: Tensor, trainer: Any, scaler: torch.amp.GradScaler) -> Tensor:
    """The micro-batch loss to backpropagate: averaged over accumulation, then loss-scaled (static or dynamic)."""
    loss = loss / trainer.grad_accum_steps
    if trainer.loss_scale_factor is not None:
        loss = loss * trainer.loss_scale_factor
    return scaler.scale(loss)


def clip_grad_norm_per_tensor_(parameters: Iterable[Tensor], max_norm: float) -> None:
    """Rescale each gradient whose L2 norm exceeds ``max_norm`` to exactly that norm (Keras ``clipnorm``)."""
    grads = [param.grad for param in parameters if param.grad is not None]
    if not grads:
        return
    for grad, norm in zip(grads, torch._foreach_norm(grads)):
        grad.mul_(max_norm / norm.clamp_min(max_norm))


def prepare_gradients(
    parameters: list[Tensor], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, trainer: Any
) -> Tensor | None:
    """Undo the loss scale, then clip as configured (module docstring); returns the global gradient norm
    before clipping when global-norm clipping is on (for the log), else None."""
    clipping = trainer.grad_clip_norm or trainer.grad_clip_norm_per_tensor or trainer.grad_clip_value
    if clipping:
        scaler.unscale_(optimizer)  # a no-op for a disabled scaler
    if trainer.loss_scale_factor is not None:
        grads = [param.grad for param in parameters if param.grad is not None]
        if grads:
            torch._foreach_div_(grads, trainer.loss_scale_factor)
    grad_norm = None
    if trainer.grad_clip_norm_per_tensor:
        clip_grad_norm_per_tensor_(parameters, trainer.grad_clip_norm_per_tensor)
    if trainer.grad_clip_norm:
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, trainer.grad_clip_norm)
    if trainer.grad_clip_value:
        torch.nn.utils.clip_grad_value_(parameters, trainer.grad_clip_value)
    return grad_norm
