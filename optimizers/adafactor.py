"""Adafactor, twice: the SOAP paper's "Adafactor" (AdafactorW) and torch.optim.Adafactor.

"adafactor" -- AdafactorW of Zhao et al., "Deconstructing What Makes a Good Optimizer for
Language Models" (rosieyzh/optimizers-llm @ a1f8a3f, olmo/optim.py), which is the Adafactor the
SOAP paper compares against: Adam whose second moment is a rank-1 product of per-dimension
marginals. For a parameter W with K dims and gradient G, per ``step()``:

    t ← t + 1
    W ← W·(1 − ηλ)                                       (decoupled, before the update)
    m ← m + (1 − β1)(G − m)
    v_k ← v_k + (1 − β2)(mean_{dims ≠ k}(G²) − v_k)       for every dim k
    V̂ = v_0 ⊗ v_1 ⊗ … ⊗ v_{K−1} / mean(v_0)^{K−1}        (matrix: V̂_ij = r_i c_j / mean(r))
    W ← W − η/(1 − β1^t) · m / (sqrt(V̂)/sqrt(1 − β2^t) + ε)

``neuron_only=True`` replaces the last marginal by its mean (one scale per output neuron).

Deliberate deviations from the reference:
* 1-D parameters get a per-element second moment (plain Adam). The reference averages G² over
  the empty list of "other" dims, which torch reads as "all dims", so a bias gets one scalar second
  moment. ``reference_1d_quirk=True`` restores that; the golden file ``adafactor_momentum_f64``
  (entry b1) is produced with it. 0-D parameters (which crash the reference) are per-element too.
* No "Multiplier: ..." print per parameter per step.
* The step counter is a Python int, not a float32 tensor (exact past 2^24 steps; same bias
  correction, since ``β**t`` is a C ``pow`` on a double either way).
* bf16/fp16 parameters keep float32 state and are updated through a float32 copy.
* The per-dim marginals are stored as a list ``exp_avg_sq`` rather than a dict keyed by dim.
* The rank-1 normalizer mean(v_0)^{K−1} is clamped at the dtype's smallest normal number, so an all-zero
  gradient (e.g. behind a zero-initialised layer) gives a zero update instead of 0/0 = NaN.
* V̂ is formed from marginals scaled by a power of two near mean(v_0), then scaled back: the reference's
  product of K marginals overflows float32 for gradients of scale ~1e10–1e15 (a zero step for matrices, NaN
  for 3-D and conv tensors); power-of-two scaling is exact, so every rounding, and the goldens, are unchanged.

"adafactor_torch" -- ``torch.optim.Adafactor`` (torch 2.13), unchanged: no momentum, β2 schedule
``1 − t^beta2_decay``, relative step ``max(eps2, RMS(W))·min(lr, 1/sqrt(t))``, update clipping at RMS
``d``, only the last two dims factored. Use "adafactor" for the SOAP paper's baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from soapbench.optimizers.adamw import validate_adam_hyperparameters
from soapbench.optimizers.registry import register_optimizer
from soapbench.optimizers.state import load_state_dict_keeping_dtypes, state_dtype_for
from soapbench.optimizers.stepping import check_lr, closure_loss, group_lr, params_with_grads


def _rank1_second_moment(marginals: list[torch.Tensor], neuron_only: bool) -> torch.Tensor:
    """V̂ = v_0 ⊗ v_1 ⊗ … / mean(v_0)^{K−1}, the reference's rank1_approximation, overflow-free.

    Formed as the reference does, the product of K marginals is ~s^K for a gradient whose squares are ~s, so a
    float32 gradient of scale 1e15 overflows (V̂ = inf: a silently zero step for matrices, NaN for 3-D and conv
    tensors) although V̂ itself is ~s. Every marginal and the mean are first divided by a power of two near
    mean(v_0) and V̂ is multiplied back by it: scaling by a power of two is exact, so each rounding is the
    reference's (the goldens are bit-identical) and nothing overflows while V̂ and the marginals are finite.
    """
    first_marginal_mean = torch.mean(marginals[0])
    scale = torch.ldexp(torch.ones_like(first_marginal_mean), torch.frexp(first_marginal_mean).exponent)
    # Same accumulation order as the reference's rank1_approximation, for bitwise parity.
    reconstruction = marginals[0] / scale
    for dim in range(1, len(marginals)):
        factor = marginals[dim] / scale
        if neuron_only and dim == len(marginals) - 1:
            factor = factor.mean(dim=0, keepdim=True).expand(*factor.shape)
        leading_shape = reconstruction.shape
        reconstruction = torch.outer(reconstruction.flatten(), factor).view(*leading_shape, factor.shape[0])
    if len(marginals) > 1:
        normalizer = (first_marginal_mean / scale) ** (len(marginals) - 1)
        # An all-zero gradient makes this 0/0 = NaN in the reference; clamping keeps V̂ = 0 there and
        # changes nothing while the normalizer is a normal number.
        reconstruction /= normalizer.clamp_min(torch.finfo(normalizer.dtype).tiny)
    return reconstruction.mul_(scale)


@register_optimizer("adafactor")
class Adafactor(torch.optim.Optimizer):
    """AdafactorW (the SOAP paper's Adafactor); see the module docstring for the math."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        neuron_only: bool = False,
        reference_1d_quirk: bool = False,
    ) -> None:
        validate_adam_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            neuron_only=bool(neuron_only),
            reference_1d_quirk=bool(reference_1d_quirk),
        )
        super().__init__(params, defaults)

    def _init_state(self, param: torch.Tensor) -> dict[str, Any]:
        dtype = state_dtype_for(param.dtype)
        state = self.state[param]
        state["step"] = 0
        state["exp_avg"] = torch.zeros(param.shape, dtype=dtype, device=param.device)
        if param.ndim <= 1:
            state["exp_avg_sq"] = [torch.zeros(param.shape, dtype=dtype, device=param.device)]
        else:
            state["exp_avg_sq"] = [torch.zeros(size, dtype=dtype, device=param.device) for size in param.shape]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_state_dict_keeping_dtypes(self, super().load_state_dict, state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        for group, param in params_with_grads(self):
            beta1, beta2 = group["betas"]
            lr, weight_decay, eps = group_lr(group), group["weight_decay"], group["eps"]
            state = self.state[param]
            if not state:
                state = self._init_state(param)
            exp_avg, marginals = state["exp_avg"], state["exp_avg_sq"]
            grad = param.grad.to(exp_avg.dtype)
            weights = param if param.dtype == exp_avg.dtype else param.to(exp_avg.dtype)

            state["step"] += 1
            step = state["step"]

            weights.mul_(1 - lr * weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)

            grad_sq = grad.square()
            if param.ndim <= 1:
                # The reference's mean over "no other dims" reduces over all dims (a scalar).
                target = grad_sq.mean() if (group["reference_1d_quirk"] and param.ndim == 1) else grad_sq
                marginals[0].lerp_(target, 1 - beta2)
                second_moment = marginals[0].clone()
            else:
                for dim in range(param.ndim):
                    other_dims = [d for d in range(param.ndim) if d != dim]
                    marginals[dim].lerp_(grad_sq.mean(dim=other_dims), 1 - beta2)
                second_moment = _rank1_second_moment(marginals, group["neuron_only"])

            step_size = lr / (1 - beta1**step)
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(eps)
            weights.addcdiv_(exp_avg, denom, value=-step_size)
            if weights is not param:
                param.copy_(weights)
        return loss


@register_optimizer("adafactor_torch")
def TorchAdafactor(
    params: Iterable,
    lr: float = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    foreach: bool | None = None,
    maximize: bool = False,
) -> torch.optim.Adafactor:
    """``torch.optim.Adafactor`` with its own keyword names and defaults (signature, not docstring:
    weight_decay defaults to 0.0)."""
    check_lr(lr)
    if not beta2_decay <= 0:
        raise ValueError(f"beta2_decay must be <= 0 (beta2_t = 1 - t^beta2_decay), got {beta2_decay}")
    eps = tuple(eps)
    if len(eps) != 2:
        raise ValueError(f"eps must be a pair (eps1 or null, eps2), got {eps}")
    if eps[0] is not None and not eps[0] >= 0:
        raise ValueError(f"eps[0] must be null (the param dtype's machine epsilon) or >= 0, got {eps[0]}")
    if not eps[1] >= 0:
        raise ValueError(f"eps[1] must be >= 0, got {eps[1]}")
    if not d >= 1:
        raise ValueError(f"d (the update-clipping RMS threshold) must be >= 1, got {d}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return torch.optim.Adafactor(
        params,
        lr=lr,
        beta2_decay=beta2_decay,
        eps=eps,
        d=d,
        weight_decay=weight_decay,
        foreach=foreach,
        maximize=maximize,
    )
