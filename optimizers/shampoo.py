"""Shampoo with Adam grafting: the SOAP paper's Shampoo baseline (Distributed Shampoo semantics, single device).

Reference: facebookresearch/optimizers ``DistributedShampoo`` (API around the SOAP paper, 1685444 / ad2809a), as
summarised in docs/algorithms.md §7; keyword names are DistributedShampoo's, with the grafting config flattened
into ``grafting_type`` / ``grafting_beta2`` / ``grafting_epsilon`` so Hydra can set it.

Each parameter is (optionally) reshaped by merging neighbouring dims while their product stays
≤ ``max_preconditioner_dim`` (``use_merge_dims``; size-1 dims are dropped), then cut into blocks whose every side is
≤ ``max_preconditioner_dim``. Every block B of order o (number of dims) carries one Kronecker factor per dim.
At step t = 1, 2, … with gradient G (per block):

    G ← G + λ W                                          only if not use_decoupled_weight_decay
    L_k ← β2 L_k + (1−β2) G_(k) G_(k)ᵀ                   (β2 = betas[1]; β2 = 1 sums)
    v ← β_g v + (1−β_g) G²                               grafting state (adam/rmsprop; adagrad sums)
    if t = t0 or (t mod f = 0 and t > t0):               t0 = start_preconditioning_step (−1 → f)
        X_k ← (L_k/(1−β2^t) + ε I)^(−e/r)                 by eigh; e = exponent_multiplier, r the root below
    m ← β1 m + (1−β1) G;  M = m / (1 − β1^t)             first moment ("filtered gradient"), shared by both
    A = M / (sqrt(v/(1−β_g^t)) + ε_g)                    grafted method's direction (Adam)
    if t < t0:  D = A                                    grafting only, before the first inverse roots
    else:       S = M ×_1 X_1 ×_2 X_2 …                  e.g. X_L M X_R for a matrix
                D = S · ‖A‖_F / (‖S‖_F + 1e-16)           per block: Shampoo's direction, Adam's step size
    D ← D + λ W                                          decoupled weight decay
    (momentum μ: b ← μ b + (1−dampening) D;  D = b, or D ← (1−dampening) D + μ b with use_nesterov)
    W ← W − η D

The exponent knob. r is the *root* of each factor: X_k = L_k^(−e/r).
* ``inv_root_override=0`` gives DistributedShampoo's default r = 2·o: −1/4 per side for matrices (so
  ``L^-1/4 G R^-1/4``, the classic Shampoo), −1/2 for vectors.
* ``inv_root_override=r`` (a number) uses r for every factor of every order: the SOAP paper's baseline
  ``inv_root_override=2.5`` means ``L^-0.4 G R^-0.4`` (DistributedShampoo HEAD: ``inverse_exponent_override=
  {1: 1/2.5, 2: 1/2.5}``). It is *not* −1/(2·2.5): the override replaces the whole root 2·o.
* ``inv_root_override=2`` gives ``L^-1/2 G R^-1/2``, the form analysed in the gradient-whitening paper (its
  extra per-layer scalar Tr(L)^(1/2) is exactly the kind of scale grafting replaces).
* A list ``[r_0, r_1, r_2, …]`` picks r by order (r_1 for vectors, r_2 for matrices), 2·o beyond its end.
* ``exponent_multiplier`` e multiplies the numerator: the exponent is −e/r.

Defaults are the SOAP paper's Shampoo baseline "harness recipe" (algorithms.md §7): betas (0.95, 0.95),
epsilon 1e-12, max_preconditioner_dim 8192, precondition_frequency 10, start_preconditioning_step −1, Adam grafting
(β_g 0.95, ε_g 1e-8), inv_root_override 2.5, decoupled weight decay. lr and weight_decay are the harness's
(3e-3 and 0.01, as SOAP's defaults).

Deliberate deviations from DistributedShampoo:
* Factors are float32, or float64 for float64 parameters (DistributedShampoo: float32 by default).
* With ``grafting_type="none"`` the steps before the first inverse roots use the (filtered) gradient itself;
  DistributedShampoo would multiply by its zero-initialised inverse factors, i.e. not move at all.
* A failed inverse root keeps the previous one (as its ``use_protected_eigh``) and is counted in ``diagnostics()``
  instead of logged; a non-finite factor is treated the same way instead of raising.
* Only the single-device path; no quantisation, no eigenvalue-corrected or Newton root variants.

A step has two halves (``step()`` is :class:`soapbench.optimizers.eigenbasis.EigenbasisOptimizer`'s): the statistics
(step count, factors, grafting state, inverse roots when due) of every parameter, then, once refresh sharing has
brought every owner's roots, the directions and updates; roots computed at step t are used at step t.

Per shape (``stack_shapes=True``, the default): same-shape matrices of a param group are stepped as one stack
(:mod:`soapbench.optimizers.batching`). Issued once per bucket instead of once per matrix: the factor EMAs' Gram
products ``G Gᵀ`` and ``Gᵀ G``, the grafting second moment, the first moment and its bias correction, Adam's grafted
direction, the preconditioned direction ``X_L M X_R``, the per-matrix norms of the grafting rescale, and decoupled
weight decay. The inverse roots (an eigh each, every f steps) are computed member by member by the per-parameter code
and copied into the stacks, and each parameter's final ``W ← W − η D`` stays its own (the parameters are separate
tensors). On CPU each kernel computes every matrix of a stack as it computes that matrix alone, so stacked Shampoo
equals per-parameter Shampoo (``tests/test_stacked_steps.py``, at one and two threads); refresh sharing is unchanged
(roots are per member).

A matrix joins a bucket when it is one unmerged block (every side ≤ ``max_preconditioner_dim``), of the compute
dtype, already initialised, with Adam or RMSProp grafting, a first moment (β1 > 0), no momentum and decoupled (or
no) weight decay — the SOAP paper's configuration; members also share their step count. Everything else, and any
bucket of one, is stepped by the per-parameter code.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.batching import rebind, stacked_state
from soapbench.optimizers.eigenbasis import EigenbasisOptimizer, RestOfStep
from soapbench.optimizers.linalg import matrix_inverse_root, mode_gram, rotate, rotate_matrix
from soapbench.optimizers.registry import register_optimizer
from soapbench.optimizers.state import state_dtype_for
from soapbench.optimizers.stepping import check_lr, group_lr

GRAFTING_TYPES = ("adam", "adagrad", "rmsprop", "sgd", "none")
# Distributed Shampoo's guard against a zero Shampoo direction in the grafting ratio (per parameter and stacked).
GRAFTING_NORM_FLOOR = 1e-16
# The state entries a bucket keeps as stacks (batching.Slot: the path into optimizer.state[p]).
STACK_SLOTS = (("exp_avg",), ("grafting_exp_avg_sq",), ("factors", 0, 0), ("factors", 0, 1),
               ("inverse_roots", 0, 0), ("inverse_roots", 0, 1))  # fmt: skip


def merge_small_dims(shape: Sequence[int], max_preconditioner_dim: int) -> tuple[int, ...]:
    """DistributedShampoo's merge: drop size-1 dims, then join neighbours while the product stays ≤ the max.

    (64, 32) → (2048,) at 8192; (16, 8, 3, 3) → (1152,); (384, 1536) stays. A scalar becomes (1,).
    """
    squeezed = [size for size in shape if size != 1] or [1]
    merged = [squeezed[0]]
    for size in squeezed[1:]:
        if merged[-1] * size <= max_preconditioner_dim:
            merged[-1] *= size
        else:
            merged.append(size)
    return tuple(merged)


@dataclass(frozen=True)
class BlockLayout:
    """A parameter's merged shape and the blocks (index tuples into the merged view) that carry factors."""

    param_shape: tuple[int, ...]
    shape: tuple[int, ...]
    blocks: tuple[tuple[slice, ...], ...]

    @property
    def single_block(self) -> bool:
        return len(self.blocks) == 1

    def view(self, tensor: Tensor) -> Tensor:
        return tensor.reshape(self.shape)

    def block_views(self, tensor: Tensor) -> list[Tensor]:
        merged = self.view(tensor)
        return [merged] if self.single_block else [merged[index] for index in self.blocks]

    def block_shape(self, index: tuple[slice, ...]) -> tuple[int, ...]:
        return tuple(len(range(*item.indices(size))) for item, size in zip(index, self.shape))


@lru_cache(maxsize=4096)
def block_layout(param_shape: tuple[int, ...], max_preconditioner_dim: int, use_merge_dims: bool) -> BlockLayout:
    shape = merge_small_dims(param_shape, max_preconditioner_dim) if use_merge_dims else param_shape
    per_dim = [
        [slice(start, min(start + max_preconditioner_dim, size)) for start in range(0, size, max_preconditioner_dim)]
        or [slice(0, 0)]
        for size in shape
    ]
    return BlockLayout(param_shape, tuple(shape), tuple(itertools.product(*per_dim)))


def inverse_root_for_order(order: int, inv_root_override: float | Sequence[float]) -> float:
    """DistributedShampoo's root r for a block of this order (number of dims); the factor power is −e/r."""
    if isinstance(inv_root_override, Sequence):
        return float(inv_root_override[order]) if order < len(inv_root_override) else float(2 * order)
    return float(2 * order) if inv_root_override == 0 else float(inv_root_override)


@register_optimizer("shampoo")
class Shampoo(EigenbasisOptimizer):
    """Shampoo (Kronecker-factored, EMA factors, eigh inverse roots) with per-block norm grafting.

    Args (DistributedShampoo keyword names; defaults = the SOAP paper's baseline recipe):
        lr: η.  betas: (β1 first-moment filtering, β2 factor EMA).  beta3: β1 used for the current step only
        (−1 → β1; DistributedShampoo's NAdam-like knob).  epsilon: ε added to the factor's eigenvalues.
        momentum, dampening, use_nesterov: SGD-style momentum on the final direction (off by default).
        weight_decay: λ.  use_decoupled_weight_decay: add λW to the direction (AdamW-style) instead of to G.
        max_preconditioner_dim: block size / merge threshold.  use_merge_dims: merge small dims first.
        precondition_frequency: f, steps between inverse-root computations.  start_preconditioning_step: t0,
        first step that uses Shampoo (−1 → f); before it the grafted method runs alone.
        inv_root_override, exponent_multiplier: the exponent, see the module docstring.
        use_bias_correction: bias-correct the first moment, the factors and the grafting state.
        grafting_type: "adam" (default), "adagrad", "rmsprop", "sgd" or "none".  grafting_beta2: β_g (adam and
        rmsprop).  grafting_epsilon: ε_g.

    Our option:
        stack_shapes: step same-shape matrices of a group as one stack (module docstring, "Per shape"; the
            same math as stepping them one by one, which False does).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        beta3: float = -1.0,
        epsilon: float = 1e-12,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.01,
        max_preconditioner_dim: int = 8192,
        precondition_frequency: int = 10,
        start_preconditioning_step: int = -1,
        inv_root_override: float | Sequence[float] = 2.5,
        exponent_multiplier: float = 1.0,
        use_nesterov: bool = False,
        use_bias_correction: bool = True,
        use_decoupled_weight_decay: bool = True,
        use_merge_dims: bool = True,
        grafting_type: str = "adam",
        grafting_beta2: float = 0.95,
        grafting_epsilon: float = 1e-8,
        stack_shapes: bool = True,
    ):
        betas = tuple(betas)
        check_lr(lr)
        if len(betas) != 2 or not 0.0 <= betas[0] < 1.0 or not 0.0 < betas[1] <= 1.0:
            raise ValueError(f"betas must be (β1 in [0, 1), β2 in (0, 1]), got {betas}")
        if beta3 != -1.0 and not 0.0 <= beta3 < 1.0:
            raise ValueError(f"beta3 must be -1 (= betas[0]) or in [0, 1), got {beta3}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= dampening < 1.0:
            raise ValueError(f"dampening must be in [0, 1), got {dampening}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if int(max_preconditioner_dim) != max_preconditioner_dim or max_preconditioner_dim < 1:
            raise ValueError(f"max_preconditioner_dim must be an integer >= 1, got {max_preconditioner_dim}")
        if int(precondition_frequency) != precondition_frequency or precondition_frequency < 1:
            raise ValueError(f"precondition_frequency must be an integer >= 1, got {precondition_frequency}")
        if start_preconditioning_step != -1 and not start_preconditioning_step >= 1:
            raise ValueError(
                f"start_preconditioning_step must be -1 (= precondition_frequency) or >= 1, "
                f"got {start_preconditioning_step}"
            )
        overrides = list(inv_root_override) if isinstance(inv_root_override, Sequence) else [inv_root_override]
        if any(not override >= 0 for override in overrides):
            raise ValueError(f"inv_root_override must be >= 0 (0 = default 2*order), got {inv_root_override}")
        if not exponent_multiplier > 0:
            raise ValueError(f"exponent_multiplier must be > 0, got {exponent_multiplier}")
        if grafting_type not in GRAFTING_TYPES:
            raise ValueError(f"grafting_type must be one of {GRAFTING_TYPES}, got {grafting_type!r}")
        if not 0.0 < grafting_beta2 <= 1.0:
            raise ValueError(f"grafting_beta2 must be in (0, 1], got {grafting_beta2}")
        if not grafting_epsilon > 0:
            raise ValueError(f"grafting_epsilon must be > 0, got {grafting_epsilon}")
        if isinstance(inv_root_override, Sequence):
            inv_root_override = tuple(float(override) for override in inv_root_override)
        defaults = dict(
            lr=lr,
            betas=betas,
            beta3=beta3,
            epsilon=epsilon,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            max_preconditioner_dim=int(max_preconditioner_dim),
            precondition_frequency=int(precondition_frequency),
            start_preconditioning_step=int(start_preconditioning_step),
            inv_root_override=inv_root_override,
            exponent_multiplier=exponent_multiplier,
            use_nesterov=use_nesterov,
            use_bias_correction=use_bias_correction,
            use_decoupled_weight_decay=use_decoupled_weight_decay,
            use_merge_dims=use_merge_dims,
            grafting_type=grafting_type,
            grafting_beta2=grafting_beta2,
            grafting_epsilon=grafting_epsilon,
            stack_shapes=bool(stack_shapes),
        )
        super().__init__(params, defaults)

    def _step_param(self, param: Tensor, group: dict[str, Any]) -> RestOfStep:
        """The statistics now; the direction and update once every rank's roots are in (module docstring)."""
        grad = self._update_statistics(param, group)
        return partial(self._update_param, param, group, grad)

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any], layout: BlockLayout) -> None:
        dtype = state_dtype_for(param.dtype)
        state["step"] = 0
        if group["betas"][0] != 0.0:
            state["exp_avg"] = torch.zeros(param.shape, dtype=dtype, device=param.device)
        if group["grafting_type"] in ("adam", "adagrad", "rmsprop"):
            state["grafting_exp_avg_sq"] = torch.zeros(param.shape, dtype=dtype, device=param.device)
        if group["momentum"] != 0.0:
            state["momentum_buffer"] = torch.zeros(param.shape, dtype=dtype, device=param.device)
        block_shapes = [layout.block_shape(index) for index in layout.blocks]
        state["factors"] = [
            [torch.zeros(size, size, dtype=dtype, device=param.device) for size in shape] for shape in block_shapes
        ]
        # Used only if the first root computation fails (DistributedShampoo starts from zeros).
        state["inverse_roots"] = [
            [torch.eye(size, dtype=dtype, device=param.device) for size in shape] for shape in block_shapes
        ]

    def _layout(self, param: Tensor, group: dict[str, Any]) -> BlockLayout:
        return block_layout(tuple(param.shape), group["max_preconditioner_dim"], group["use_merge_dims"])

    def _update_statistics(self, param: Tensor, group: dict[str, Any]) -> Tensor:
        """Advance the step, the factors and the grafting state; inverse roots when due. Returns the gradient used."""
        state = self.state[param]
        layout = self._layout(param, group)
        if "step" not in state:
            self._init_state(param, state, group, layout)
        compute_dtype = state_dtype_for(param.dtype)
        grad = param.grad if param.grad.dtype == compute_dtype else param.grad.to(compute_dtype)
        weight_decay = group["weight_decay"]
        state["step"] += 1
        step = state["step"]
        if weight_decay != 0.0 and not group["use_decoupled_weight_decay"]:
            weights = param if param.dtype == compute_dtype else param.to(compute_dtype)
            grad = grad.add(weights, alpha=weight_decay)

        self._update_factors(grad, state, layout, group["betas"][1])
        grafting_type = group["grafting_type"]
        if grafting_type in ("adam", "rmsprop"):
            grafting_beta2 = group["grafting_beta2"]
            state["grafting_exp_avg_sq"].mul_(grafting_beta2).addcmul_(grad, grad, value=1.0 - grafting_beta2)
        elif grafting_type == "adagrad":
            state["grafting_exp_avg_sq"].addcmul_(grad, grad)

        start = self._start(group)
        if step == start or (step % group["precondition_frequency"] == 0 and step > start):
            if self._computes_refresh(param):
                self._compute_inverse_roots(state, group, layout, step)
            self._publish_refresh(
                param, [(roots, index) for roots in state["inverse_roots"] for index in range(len(roots))]
            )
        return grad

    @staticmethod
    def _start(group: dict[str, Any]) -> int:
        start = group["start_preconditioning_step"]
        return group["precondition_frequency"] if start == -1 else start

    def _update_param(self, param: Tensor, group: dict[str, Any], grad: Tensor) -> None:
        """Momentum, the grafted Shampoo direction, decoupled weight decay and the parameter update."""
        state = self.state[param]
        layout = self._layout(param, group)
        compute_dtype = state_dtype_for(param.dtype)
        weights = param if param.dtype == compute_dtype else param.to(compute_dtype)
        beta1 = group["betas"][0]
        # −1 resolves per group at every step, so a group overriding betas / the frequency gets its own value.
        beta3 = beta1 if group["beta3"] == -1.0 else group["beta3"]
        weight_decay = group["weight_decay"]
        bias_correction = group["use_bias_correction"]
        step = state["step"]
        start = self._start(group)

        filtered = grad
        if beta1 != 0.0:
            exp_avg = state["exp_avg"]
            current = torch.lerp(exp_avg, grad, 1.0 - beta3) if beta3 != beta1 else None
            exp_avg.lerp_(grad, 1.0 - beta1)
            filtered = exp_avg if current is None else current
            if bias_correction:
                filtered = filtered / (1.0 - beta3 * beta1 ** (step - 1))

        grafted = self._grafted_direction(filtered, state, group, step)
        if step < start:
            direction = filtered if grafted is None else grafted
        else:
            direction = self._shampoo_direction(filtered, grafted, state, layout)

        if weight_decay != 0.0 and group["use_decoupled_weight_decay"]:
            direction = direction.add(weights, alpha=weight_decay)
        momentum = group["momentum"]
        if momentum != 0.0:
            buffer = state["momentum_buffer"]
            buffer.mul_(momentum).add_(direction, alpha=1.0 - group["dampening"])
            if group["use_nesterov"]:
                direction = direction.mul(1.0 - group["dampening"]).add_(buffer, alpha=momentum)
            else:
                direction = buffer
        param.add_(direction, alpha=-group_lr(group))

    @staticmethod
    def _update_factors(grad: Tensor, state: dict[str, Any], layout: BlockLayout, beta2: float) -> None:
        for block, factors in zip(layout.block_views(grad), state["factors"]):
            for dim, factor in enumerate(factors):
                if beta2 != 1.0:
                    factor.mul_(beta2).add_(mode_gram(block, dim), alpha=1.0 - beta2)
                else:
                    factor.add_(mode_gram(block, dim))

    def _compute_inverse_roots(
        self, state: dict[str, Any], group: dict[str, Any], layout: BlockLayout, step: int
    ) -> None:
        beta2 = group["betas"][1]
        bias_correction2 = 1.0 - beta2**step if group["use_bias_correction"] and beta2 < 1.0 else 1.0
        for factors, inverse_roots in zip(state["factors"], state["inverse_roots"]):
            root = inverse_root_for_order(len(factors), group["inv_root_override"]) / group["exponent_multiplier"]
            for index, factor in enumerate(factors):
                precision = "float64" if factor.dtype == torch.float64 else "float32"
                inverse_roots[index] = matrix_inverse_root(
                    factor / bias_correction2,
                    root,
                    epsilon=group["epsilon"],
                    precision=precision,
                    previous=inverse_roots[index],
                    health=self.linalg_health,
                )

    @staticmethod
    def _grafted_direction(filtered: Tensor, state: dict[str, Any], group: dict[str, Any], step: int) -> Tensor | None:
        """The grafted method's direction on the filtered gradient (only its second moment is grafted)."""
        grafting_type = group["grafting_type"]
        if grafting_type == "none":
            return None
        if grafting_type == "sgd":
            return filtered
        second_moment = state["grafting_exp_avg_sq"]
        if grafting_type == "adam" and group["use_bias_correction"] and group["grafting_beta2"] < 1.0:
            second_moment = second_moment / (1.0 - group["grafting_beta2"] ** step)
        denominator = second_moment.sqrt().add_(group["grafting_epsilon"])
        return filtered / denominator

    @staticmethod
    def _shampoo_direction(
        filtered: Tensor, grafted: Tensor | None, state: dict[str, Any], layout: BlockLayout
    ) -> Tensor:
        """``S = M ×_k X_k`` per block, each block rescaled to the grafted direction's norm when grafting."""
        blocks = layout.block_views(filtered)
        grafted_blocks = None if grafted is None else layout.block_views(grafted)
        directions = []
        for index, (block, inverse_roots) in enumerate(zip(blocks, state["inverse_roots"])):
            direction = rotate(block, inverse_roots) if inverse_roots else block
            if grafted_blocks is not None:
                scale = torch.linalg.vector_norm(grafted_blocks[index]) / (
                    torch.linalg.vector_norm(direction) + GRAFTING_NORM_FLOOR
                )
                direction = direction * scale
            directions.append(direction)
        if layout.single_block:
            return directions[0].reshape(layout.param_shape)
        merged = torch.empty(layout.shape, dtype=filtered.dtype, device=filtered.device)
        for index, direction in zip(layout.blocks, directions):
            merged[index] = direction
        return merged.reshape(layout.param_shape)

    # ------------------------------------------------------------------------------------------------------------
    # A bucket of same-shape matrices, as one stack (module docstring, "Per shape")
    # ------------------------------------------------------------------------------------------------------------

    def _bucket_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        state = self.state.get(param)
        if not state or "step" not in state or param.dim() != 2:
            return None
        compute_dtype = state_dtype_for(param.dtype)
        if param.dtype != compute_dtype or param.grad.dtype != compute_dtype:
            return None
        decoupled = group["use_decoupled_weight_decay"] or group["weight_decay"] == 0.0
        if group["grafting_type"] not in ("adam", "rmsprop") or group["betas"][0] == 0.0 or group["momentum"] != 0.0:
            return None
        layout = self._layout(param, group)
        if not decoupled or not layout.single_block or layout.shape != tuple(param.shape):
            return None
        return (tuple(param.shape), param.dtype, param.device, state["step"])

    def _step_stack(self, params: list[Tensor], group: dict[str, Any]) -> RestOfStep:
        grads = self._update_stack_statistics(params, group)
        return partial(self._update_stack, params, group, grads)

    def _update_stack_statistics(self, params: list[Tensor], group: dict[str, Any]) -> Tensor:
        """``_update_statistics`` for a bucket: step, factors, grafting state, inverse roots when due."""
        stacked = stacked_state(self, params, STACK_SLOTS)
        states = [self.state[param] for param in params]
        grads = torch.stack([param.grad for param in params])
        step = states[0]["step"] + 1
        for state in states:
            state["step"] = step
        beta2 = group["betas"][1]
        for factor, gram in (
            (stacked[("factors", 0, 0)], grads @ grads.mT),
            (stacked[("factors", 0, 1)], grads.mT @ grads),
        ):
            if beta2 != 1.0:
                factor.mul_(beta2).add_(gram, alpha=1.0 - beta2)
            else:
                factor.add_(gram)
        grafting_beta2 = group["grafting_beta2"]
        stacked[("grafting_exp_avg_sq",)].mul_(grafting_beta2).addcmul_(grads, grads, value=1.0 - grafting_beta2)

        start = self._start(group)
        if step == start or (step % group["precondition_frequency"] == 0 and step > start):
            for index, (param, state) in enumerate(zip(params, states)):
                if self._computes_refresh(param):
                    self._compute_inverse_roots(state, group, self._layout(param, group), step)
                    for dim in (0, 1):
                        rebind(state, ("inverse_roots", 0, dim), stacked, index)
                roots = state["inverse_roots"]
                self._publish_refresh(param, [(block, dim) for block in roots for dim in range(len(block))])
        return grads

    def _update_stack(self, params: list[Tensor], group: dict[str, Any], grads: Tensor) -> None:
        """``_update_param`` for a bucket: first moment, grafted Shampoo direction, weight decay, the update."""
        stacked = stacked_state(self, params, STACK_SLOTS)  # the roots may have arrived from their owners since
        step = self.state[params[0]]["step"]
        beta1 = group["betas"][0]
        beta3 = beta1 if group["beta3"] == -1.0 else group["beta3"]
        exp_avg = stacked[("exp_avg",)]
        current = torch.lerp(exp_avg, grads, 1.0 - beta3) if beta3 != beta1 else None
        exp_avg.lerp_(grads, 1.0 - beta1)
        filtered = exp_avg if current is None else current
        if group["use_bias_correction"]:
            filtered = filtered / (1.0 - beta3 * beta1 ** (step - 1))

        second_moment = stacked[("grafting_exp_avg_sq",)]
        if group["grafting_type"] == "adam" and group["use_bias_correction"] and group["grafting_beta2"] < 1.0:
            second_moment = second_moment / (1.0 - group["grafting_beta2"] ** step)
        grafted = filtered / second_moment.sqrt().add_(group["grafting_epsilon"])
        if step < self._start(group):
            direction = grafted
        else:
            direction = rotate_matrix(filtered, stacked[("inverse_roots", 0, 0)], stacked[("inverse_roots", 0, 1)])
            norms = torch.linalg.vector_norm(direction, dim=(-2, -1), keepdim=True)
            scale = torch.linalg.vector_norm(grafted, dim=(-2, -1), keepdim=True) / (norms + GRAFTING_NORM_FLOOR)
            direction = direction * scale
        weight_decay, lr = group["weight_decay"], group_lr(group)
        for param, member in zip(params, direction.unbind(0)):
            param.add_(member.add(param, alpha=weight_decay) if weight_decay != 0.0 else member, alpha=-lr)
