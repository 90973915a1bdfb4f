"""KL-Shampoo's and KL-SOAP's step per shape: same-shape matrices of a param group stepped as one stack.

The stacks are :mod:`soapbench.optimizers.batching`'s (each parameter's state entries stay views into them). Issued once per
bucket instead of once per matrix: the rotations ``Q_Lᵀ G Q_R`` (KL-SOAP) and ``Q_Lᵀ m Q_R`` (KL-Shampoo), the
moment updates, KL-Shampoo's Kronecker scale ``s_L ⊗ s_R / (1 + ε s_L ⊗ s_R)``, KL-SOAP's ``m/(√v+ε)``, the first
back-rotation product, the whitened products ``diag(s_R) Q_Rᵀ Gᵀ`` and ``(Q_Lᵀ G) diag(s_L)``, the Gram products
of the curvature update (factors narrower than ``2·SYMMETRIC_BLOCK``), the factor and eigenvalue EMAs with their
clamps, and at refresh steps KL-SOAP's momentum move between bases.

Kept one per matrix, because a batched kernel would round them differently from the per-parameter code:

* the two matrix-vector products of the eigenvalue update, ``(F⊙F) s_R²`` and ``s_L² (F⊙F)`` (a GEMV alone; as a
  batch of ``n×1`` GEMMs they sum in another order);
* the block-symmetric factor update of factors at least ``2·SYMMETRIC_BLOCK`` wide (``linalg.gram_update_``);
* the fused weight update ``W ← c W − c η (X Q_Rᵀ)`` (``addmm_`` with a beta; the parameters are separate tensors);
* the QR refresh of the bases, every f steps (``power_qr_refresh`` per factor, with its failure fallback to the
  exact previous basis).

Same math per matrix, same rounding: stacked KL is bit-identical to per-parameter KL (``tests/test_stacked_steps.py``,
at one and two threads), so the goldens are untouched. Under refresh sharing a rank refreshes the members it owns;
a broadcast replaces members' tensors, which :class:`soapbench.optimizers.batching.StackedState` notices and restacks.

A matrix joins a bucket when it is 2-D in KL's working shape (no squeezed or merged dims), its dtype, gradient and
state all in the state dtype, ``normalize_grads`` and ``using_damping`` off (their RMS and trace reductions would
sum differently over a stack), and already initialised; members also share their step count. Everything else,
and any bucket of one, is stepped by ``_step_param``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.batching import StackedSteps, rebind, stacked_state
from soapbench.optimizers.kl_math import accumulate_gram, updated_inv_sqrt_eigenvalues, working_shape
from soapbench.optimizers.linalg import rotate_matrix, unrotate_matrix
from soapbench.optimizers.stepping import group_lr

SHAMPOO_SLOTS = (("exp_avg",), ("factors", 0), ("factors", 1), ("bases", 0), ("bases", 1),
                 ("inv_sqrt_eigenvalues", 0), ("inv_sqrt_eigenvalues", 1))  # fmt: skip
SOAP_SLOTS = SHAMPOO_SLOTS + (("exp_avg_sq",),)


class StackedKLSteps(StackedSteps):
    """Mixin for KL-Shampoo and KL-SOAP (:mod:`soapbench.optimizers.kl`): ``step()`` by same-shape buckets (module docstring)."""

    def _bucket_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        """What same-shape members must share to be stepped together, or None (stepped alone)."""
        state = self.state.get(param)
        if not group.get("stack_shapes", True) or not state or "step" not in state:
            return None
        if group["normalize_grads"] or group["using_damping"] or param.dim() != 2:
            return None
        if working_shape(param.shape) != tuple(param.shape):
            return None
        dtype = state["exp_avg"].dtype
        if param.dtype != dtype or param.grad.dtype != dtype or state["factors"][0].dtype != dtype:
            return None
        return (tuple(param.shape), dtype, param.device, state["step"])

    def _step_stack(self, params: list[Tensor], group: dict[str, Any]) -> None:
        stacked = stacked_state(self, params, SOAP_SLOTS if self._using_klsoap else SHAMPOO_SLOTS)
        states = [self.state[param] for param in params]
        left, right = stacked[("bases", 0)], stacked[("bases", 1)]
        grads = torch.stack([param.grad for param in params])
        step = states[0]["step"] + 1
        for state in states:
            state["step"] = step

        rotated = None
        if self._using_klsoap:
            left_rotated = (grads.mT @ left).mT
            rotated = (left_rotated, left_rotated @ right)
            moments = {"exp_avg": stacked[("exp_avg",)], "exp_avg_sq": stacked[("exp_avg_sq",)]}
            # The per-parameter direction works on stacks as they are: every op in it is elementwise.
            eigen_direction = self._klsoap_rotated_direction(grads, moments, group, rotated[1])
        else:
            eigen_direction = self._klshampoo_stack_direction(grads, stacked, group)
        lr = group_lr(group)
        decay = 1.0 - lr * group["weight_decay"] if group["weight_decay"] > 0.0 else 1.0
        half = eigen_direction.mT @ left.mT
        for param, half_one, right_one in zip(params, half.unbind(0), right.unbind(0)):
            param.addmm_(half_one.mT, right_one.mT, beta=decay, alpha=-lr * decay)

        due = step % group["precondition_frequency"] == 0
        owned = [index for index, param in enumerate(params) if due and self._computes_refresh(param)]
        if self._using_klsoap and owned:
            rows = slice(None) if len(owned) == len(params) else torch.tensor(owned, device=grads.device)
            momentum = unrotate_matrix(stacked[("exp_avg",)][rows], left[rows], right[rows])
        self._update_stack_curvature(grads, stacked, group, rotated)
        for index in owned:
            state = self.state[params[index]]
            for dim in (0, 1):
                state["bases"][dim] = self._refreshed_basis(state["factors"][dim], state["bases"][dim])
                rebind(state, ("bases", dim), stacked, index)
        if self._using_klsoap and owned:
            stacked[("exp_avg",)][rows] = rotate_matrix(momentum, left[rows], right[rows])
        if due:
            for param, state in zip(params, states):
                slots = [(state["bases"], dim) for dim in range(2)]
                self._publish_refresh(param, slots + ([(state, "exp_avg")] if self._using_klsoap else []))

    @staticmethod
    def _klshampoo_stack_direction(grads: Tensor, stacked, group: dict[str, Any]) -> Tensor:
        """:meth:`_klshampoo_rotated_direction` on a stack: ``rot(m) ⊙ s_L ⊗ s_R / (1 + ε s_L ⊗ s_R)``."""
        exp_avg = stacked[("exp_avg",)]
        exp_avg.lerp_(grads, 1.0 - group["betas"][0])
        scale = stacked[("inv_sqrt_eigenvalues", 0)].unsqueeze(-1) * stacked[("inv_sqrt_eigenvalues", 1)].unsqueeze(-2)
        scale.div_(1.0 + (scale * group["eps"]))
        return rotate_matrix(exp_avg, stacked[("bases", 0)], stacked[("bases", 1)]) * scale

    def _update_stack_curvature(
        self, grads: Tensor, stacked, group: dict[str, Any], rotated: tuple[Tensor, Tensor] | None
    ) -> None:
        """:meth:`_update_curvature_2d` on a stack (module docstring: which products stay per matrix)."""
        beta = self._shampoo_beta(group)
        rows, columns = grads.shape[1:]
        numel = rows * columns
        left_basis, right_basis = stacked[("bases", 0)], stacked[("bases", 1)]
        left_inv_sqrt, right_inv_sqrt = stacked[("inv_sqrt_eigenvalues", 0)], stacked[("inv_sqrt_eigenvalues", 1)]

        right_whitened = (right_basis.mT @ grads.mT) * right_inv_sqrt.unsqueeze(-1)
        accumulate_gram(stacked[("factors", 0)], right_whitened.mT, beta, numel)
        if rotated is None:
            left_rotated = left_basis.mT @ grads
            fully_rotated = left_rotated @ right_basis
        else:
            left_rotated, fully_rotated = rotated
        left_whitened = left_rotated * left_inv_sqrt.unsqueeze(-1)
        accumulate_gram(stacked[("factors", 1)], left_whitened.mT, beta, numel)

        squared = fully_rotated.square()
        right_squared, left_squared = right_inv_sqrt.square(), left_inv_sqrt.square()
        left_new_term = torch.stack([one @ vector for one, vector in zip(squared, right_squared)]).div_(columns)
        right_new_term = torch.stack([vector @ one for one, vector in zip(squared, left_squared)]).div_(rows)
        left_inv_sqrt.copy_(updated_inv_sqrt_eigenvalues(
            left_inv_sqrt, left_new_term, beta, self._clamp_max(group, rows), None
        ))  # fmt: skip
        right_inv_sqrt.copy_(updated_inv_sqrt_eigenvalues(
            right_inv_sqrt, right_new_term, beta, self._clamp_max(group, columns), None
        ))  # fmt: skip
