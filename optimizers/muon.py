"""Muon, twice: Keller Jordan's reference and torch.optim.Muon.

"muon" -- Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024);
KellerJordan/Muon @ 857d1ad, muon.py, ``SingleDeviceMuon`` / ``muon_update``. With momentum μ,
learning rate η and weight decay λ, per ``step()`` and matrix parameter W (m×n) with gradient G:

    B ← B + (1 − μ)(G − B)                               (EMA momentum buffer)
    U = G + μ(B − G)                                     (Nesterov; U = B without it)
    O = NS₅(U)                                           (Newton–Schulz in bfloat16, below)
    O ← O · sqrt(max(1, m/n))
    W ← W·(1 − ηλ)
    W ← W − η·O

NS₅ (coefficients a, b, c = 3.4445, −4.7750, 2.0315), all in bfloat16:
    X = bf16(U), transposed if m > n;  X ← X / (‖X‖_F + 1e-7)
    repeat ns_steps times:  A = X Xᵀ;  B = b·A + (c·A)A;  X = a·X + B X
The operation grouping (``(c·A) @ A``, separate scalar multiplies) and the bf16 multiply by the
aspect factor are Keller's; they are kept because bf16 rounding makes the trajectory depend on them.

Where the three products run (``ns_matmul``): "bf16" multiplies the bf16 operands with torch's bf16 GEMM, the
reference's exact ops. "float32" multiplies the same bf16 operands with a float32 GEMM and rounds the product to
bf16: the same inputs, the same rounding points and float32 accumulation as a bf16 GEMM kernel; only the order of
the sums differs (1 bf16 ulp in ~0.01% of a product's entries, measured). "auto" (the default) is "float32" on
CPU and "bf16" elsewhere: a CPU without native bf16 (AVX2, no AVX512-BF16/AMX) runs torch's bf16 GEMM 8-24x
slower than float32 (an AMD EPYC with AVX2: 8 ms against 1 ms per 128x128 NS step, one thread), which made Muon
with 10 NS steps 1.6 s a step on nanogpt_char_cpu, 5x SOAP-Muon; a wall-clock comparison would time the
emulation, not the algorithm.

Keller's Muon trains hidden matrices only. Registered with ``main_roles=("matrix",)``, so
``build_optimizer("muon", model)`` hands embeddings, the head and 1-D parameters to an AdamW
companion, as his ``MuonWithAuxAdam`` does with its internal Adam (betas (0.9, 0.95), eps 1e-10,
weight decay before the update: the same math as torch AdamW).

Deliberate deviations from the reference:
* Parameters without a gradient are skipped (the reference zero-fills ``p.grad`` to keep its
  distributed ranks in step, which still decays them and their momentum).
* ``p.grad`` is left untouched (the reference writes the Nesterov mix into it in place).
* ≥3-D parameters are viewed as (out, rest). The reference does this for 4-D only and would run a
  *batched* NS over the leading dim of a 3-D tensor. The aspect factor still uses the original
  tensor's last two dims, as the reference does for 4-D (kh/kw for a conv; it matters only if kh > kw).
* bf16/fp16 parameters keep a float32 momentum buffer.
* ``nesterov`` and ``ns_steps`` are exposed (the reference class fixes them to True and 5; its
  ``muon_update`` takes both), so the SOAP-Muon paper's Muon baseline (10 NS steps) is expressible.
* Parameters with fewer than 2 dims are rejected at construction instead of failing in NS.

"muon_torch" -- ``torch.optim.Muon`` (torch 2.13): same momentum, bf16 NS with the fused ``addmm`` grouping and
a clamp instead of ``+ eps``, learning rate (not the update) scaled by sqrt(max(1, m/n)) ("original") or
0.2·sqrt(max(m, n)) ("match_rms_adamw"), weight decay default 0.1. torch's class accepts only 2-D parameters;
here a ≥3-D parameter (a conv kernel: the harness's "matrix" role includes them) is handed to torch's own update
as a contiguous (out, rest) view, so for 2-D parameters "muon_torch" *is* torch.optim.Muon and a conv kernel
(O, I, kh, kw) gets exactly what torch gives an (O, I·kh·kw) matrix, its lr scale included. The hook is
``Muon._init_group``, the method torch's ``step`` uses to collect its tensors (torch is pinned to 2.13).
Parameters with fewer than 2 dims are rejected at construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.registry import register_optimizer
from soapbench.optimizers.state import load_state_dict_keeping_dtypes, state_dtype_for
from soapbench.optimizers.stepping import check_lr, closure_loss, group_lr, params_with_grads

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_NS_EPS = 1e-7


NS_MATMULS = ("auto", "bf16", "float32")


def check_ns_matmul(ns_matmul: str) -> None:
    if ns_matmul not in NS_MATMULS:
        raise ValueError(f"ns_matmul must be one of {', '.join(NS_MATMULS)}, got {ns_matmul!r}")


def _bf16_product_via_float32(left: Tensor, right: Tensor) -> Tensor:
    """The bf16 operands' product by a float32 GEMM, rounded to bf16 (see ``ns_matmul`` in the module docstring)."""
    return (left.float() @ right.float()).bfloat16()


def _bf16_product(left: Tensor, right: Tensor) -> Tensor:
    return left @ right


def zeropower_via_newtonschulz5_keller(matrix: Tensor, steps: int, ns_matmul: str = "auto") -> Tensor:
    """Keller's quintic Newton–Schulz in bfloat16, with his operation grouping; returns bfloat16.
    ``ns_matmul``: where the products run ("auto": float32 GEMM on CPU, bf16 GEMM elsewhere; module docstring)."""
    check_ns_matmul(ns_matmul)
    via_float32 = ns_matmul == "float32" or (ns_matmul == "auto" and matrix.device.type == "cpu")
    product = _bf16_product_via_float32 if via_float32 else _bf16_product
    a, b, c = NS_COEFFICIENTS
    X = matrix.bfloat16()
    transposed = matrix.size(-2) > matrix.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + _NS_EPS)
    for _ in range(steps):
        A = product(X, X.mT)
        # Python reads the reference's `c * A @ A` as (c*A) @ A; bf16 rounding depends on it.
        B = b * A + product(c * A, A)
        X = a * X + product(B, X)
    if transposed:
        X = X.mT
    return X


def keller_aspect_scale(shape: torch.Size) -> float:
    """sqrt(max(1, rows/cols)) from the tensor's last two dims (for a conv: kh/kw, Keller's quirk)."""
    return max(1, shape[-2] / shape[-1]) ** 0.5


@register_optimizer("muon", main_roles=("matrix",))
class Muon(torch.optim.Optimizer):
    """Keller Jordan's Muon (``SingleDeviceMuon``); see the module docstring for the math."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_matmul: str = "auto",
    ) -> None:
        check_lr(lr)
        check_ns_matmul(ns_matmul)
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 1 <= ns_steps < 100:
            raise ValueError(f"ns_steps must be an integer in [1, 100), got {ns_steps!r}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=bool(nesterov),
            ns_steps=ns_steps,
            ns_matmul=ns_matmul,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group_index = len(self.param_groups) - 1
        for param_index, param in enumerate(self.param_groups[-1]["params"]):
            if param.ndim < 2:
                self.param_groups.pop()
                raise ValueError(
                    f"Muon trains matrices only; param {param_index} of group {group_index} has shape "
                    f"{tuple(param.shape)}. Give embeddings, the head and 1-D params to AdamW "
                    f"(build_optimizer does this from a model)."
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_state_dict_keeping_dtypes(self, super().load_state_dict, state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        for group, param in params_with_grads(self):
            lr, momentum = group_lr(group), group["momentum"]
            state = self.state[param]
            if not state:
                state["momentum_buffer"] = torch.zeros(
                    param.shape, dtype=state_dtype_for(param.dtype), device=param.device
                )
            buffer = state["momentum_buffer"]
            grad = param.grad.to(buffer.dtype)

            buffer.lerp_(grad, 1 - momentum)
            update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
            if update.ndim > 2:
                update = update.reshape(len(update), -1)
            orthogonalized = zeropower_via_newtonschulz5_keller(
                update, steps=group["ns_steps"], ns_matmul=group.get("ns_matmul", "auto")
            )
            # In place on the bf16 result, as the reference does: the product is rounded to bf16.
            orthogonalized *= keller_aspect_scale(param.shape)

            param.mul_(1 - lr * group["weight_decay"])
            param.add_(orthogonalized.reshape(param.shape), alpha=-lr)
        return loss


@register_optimizer("muon_torch", main_roles=("matrix",))
class TorchMuon(torch.optim.Muon):
    """``torch.optim.Muon``, unchanged for matrices; ≥3-D params are handed to it as (out, rest) views."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = _NS_EPS,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
    ) -> None:
        check_lr(lr)
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        ns_coefficients = tuple(ns_coefficients)
        if len(ns_coefficients) != 3:
            raise ValueError(f"ns_coefficients must be three numbers (a, b, c), got {ns_coefficients}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 1 <= ns_steps < 100:
            raise ValueError(f"ns_steps must be an integer in [1, 100), got {ns_steps!r}")
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn must be null, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=bool(nesterov),
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
        )
        # torch.optim.Muon.__init__ only adds a 2-D-only check to this; add_param_group below replaces it.
        torch.optim.Optimizer.__init__(self, params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group_index = len(self.param_groups) - 1
        for param_index, param in enumerate(self.param_groups[-1]["params"]):
            problem = None
            if param.ndim < 2:
                problem = "torch.optim.Muon trains matrices only"
            elif param.ndim > 2 and not param.is_contiguous():
                problem = "a >2-D parameter is updated through an (out, rest) view and must be contiguous"
            if problem:
                self.param_groups.pop()
                raise ValueError(
                    f"{problem}; param {param_index} of group {group_index} has shape {tuple(param.shape)}. "
                    f"Give vectors to the companion (build_optimizer does this from a model), or use optimizer 'muon'."
                )

    def _init_group(
        self,
        group: dict[str, Any],
        params_with_grad: list[Tensor],
        grads: list[Tensor],
        muon_momentum_bufs: list[Tensor],
    ) -> bool:
        # torch.optim.Muon.step calls this (torch 2.13) and runs its own update on the lists filled here; the
        # (out, rest) views share storage with the parameter and buffer, so torch's in-place update lands in them.
        for param in group["params"]:
            if param.grad is None:
                continue
            if torch.is_complex(param):
                raise RuntimeError("Muon does not support complex parameters")
            if param.grad.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
            if param.ndim > 2 and not param.is_contiguous():
                raise RuntimeError(
                    f"muon_torch views >2-D parameters as (out, rest); got a non-contiguous {tuple(param.shape)}"
                )
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros(param.shape, dtype=param.grad.dtype, device=param.device)
            params_with_grad.append(_as_matrix(param))
            grads.append(param.grad if param.grad.ndim == 2 else param.grad.reshape(param.shape[0], -1))
            muon_momentum_bufs.append(_as_matrix(state["momentum_buffer"]))
        return False


def _as_matrix(tensor: Tensor) -> Tensor:
    return tensor if tensor.ndim == 2 else tensor.view(tensor.shape[0], -1)
