"""Shampoo's step per shape: same-shape matrices of a param group stepped as one stack (optimizers/batching.py).

Issued once per bucket instead of once per matrix: the factor EMAs' Gram products ``G Gᵀ`` and ``Gᵀ G``, the
grafting second moment, the first moment and its bias correction, Adam's grafted direction, the preconditioned
direction ``X_L M X_R``, the per-matrix norms of the grafting rescale, and decoupled weight decay. The inverse roots
(an eigh each, every f steps) are computed member by member by the per-parameter code and copied into the stacks,
and each parameter's final ``W ← W − η D`` stays its own (the parameters are separate tensors).

Same math per matrix, same rounding: on CPU each kernel computes every matrix of a stack exactly as it computes
that matrix alone, so stacked Shampoo is bit-identical to per-parameter Shampoo (``tests/test_stacked_steps.py``,
at one and two threads); refresh sharing is unchanged (roots are per member).

A matrix joins a bucket when it is one unmerged block (every side ≤ ``max_preconditioner_dim``), of the compute
dtype, already initialised, with Adam or RMSProp grafting, a first moment (β1 > 0), no momentum and decoupled (or
no) weight decay — the SOAP paper's configuration; members also share their step count. Everything else, and any
bucket of one, is stepped by the per-parameter code.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.batching import forget_stale_stacks, group_buckets, rebind, stacked_state
from soapbench.optimizers.linalg import rotate_matrix
from soapbench.optimizers.state import state_dtype_for
from soapbench.optimizers.stepping import closure_loss, group_lr

# Distributed Shampoo's guard against a zero Shampoo direction in the grafting ratio (both Shampoo steps use it).
GRAFTING_NORM_FLOOR = 1e-16

SLOTS = (("exp_avg",), ("grafting_exp_avg_sq",), ("factors", 0, 0), ("factors", 0, 1),
         ("inverse_roots", 0, 0), ("inverse_roots", 0, 1))  # fmt: skip


class StackedShampooSteps:
    """Mixin for :class:`soapbench.optimizers.shampoo.Shampoo`: ``step()`` by same-shape buckets (module docstring)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        self._plan_refreshes()
        # Two passes, as the per-parameter step: roots computed at step t are used at step t, so with refresh
        # sharing every owner's roots must have arrived before any direction is formed.
        prepared = []
        for group, bucket in group_buckets(self, self._bucket_key):
            if len(bucket) == 1:
                prepared.append((bucket, group, self._update_statistics(bucket[0], group)))
            else:
                prepared.append((bucket, group, self._update_stack_statistics(bucket, group)))
        self._synchronize_refreshes()
        for bucket, group, grads in prepared:
            if len(bucket) == 1:
                self._update_param(bucket[0], group, grads)
            else:
                self._update_stack(bucket, group, grads)
        forget_stale_stacks(self)
        return loss

    def _bucket_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        state = self.state.get(param)
        if not group.get("stack_shapes", True) or not state or "step" not in state or param.dim() != 2:
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

    def _update_stack_statistics(self, params: list[Tensor], group: dict[str, Any]) -> Tensor:
        """``_update_statistics`` for a bucket: step, factors, grafting state, inverse roots when due."""
        stacked = stacked_state(self, params, SLOTS)
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
        stacked = stacked_state(self, params, SLOTS)  # the roots may have arrived from their owners since
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
