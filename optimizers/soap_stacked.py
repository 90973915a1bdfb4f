"""SOAP's step per shape: same-shape matrices of a param group stepped as one stack (optimizers/batching.py).

Each operation of :meth:`SOAP._step_param`'s fused path is issued once per bucket instead of once per matrix:
the gradient rotation ``Q_Lᵀ G Q_R``, the moment updates, ``m/(√v+ε)``, the first back-rotation product, and at
refresh steps the momentum's move between bases, the power-iteration products ``L·Q``, the eigenvalue estimates,
their sort and the Householder QR (batched on a GPU; a CPU refreshes member by member, see
``BATCHED_REFRESH_DEVICES``). Two products stay one per matrix: the factor EMA ``L ← β L + (1−β) G Gᵀ`` and
the fused weight update ``W ← c W − c α (X Q_Rᵀ)`` (``addmm_`` with a beta): a batched ``baddbmm_`` rounds these
differently from ``addmm_`` when BLAS runs on several threads, and the parameters are separate tensors anyway.

Same math per matrix, same rounding: every batched kernel here (``bmm``, elementwise ops, per-matrix reductions
and sorts, batched ``geqrf``/``householder_product``) computes each matrix of a stack exactly as it computes that
matrix alone on CPU, so stacked SOAP is bit-identical to per-parameter SOAP (``tests/test_stacked_steps.py``, at
one and at two threads). A QR failure is judged matrix by matrix (``linalg.orthonormalize_qr``), so retries,
fallbacks and health counts are the per-parameter ones. Under refresh sharing a rank refreshes the stack of the
members it owns. ``refresh_method="eigh"`` refreshes member by member everywhere. On a GPU, whether cuBLAS and
cuSOLVER round each matrix of a batch as they would alone is theirs to choose; the CPU tests cannot check it.

A matrix joins a bucket when it takes the fused path anyway: 2-D, not reshaped, right side preconditioned, its
dtype (and m, v's) the compute dtype, no ``normalize_grads`` / ``bitwise_reference``, already initialised; members
also share their step count. Everything else, and any bucket of one, is stepped by ``_step_param``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.batching import StackedSteps, rebind, stacked_state
from soapbench.optimizers.linalg import gram_update_, power_qr_refresh, rotate_matrix, select_along, unrotate_matrix
from soapbench.optimizers.state import state_dtype_for
from soapbench.optimizers.stepping import group_lr

SLOTS = (("exp_avg",), ("exp_avg_sq",), ("GG", 0), ("GG", 1), ("Q", 0), ("Q", 1))
# Devices whose QR refresh runs on the whole stack at once. On CPU, LAPACK factorises a batch one matrix at a time
# anyway, and the stack's gathers cost more than they save (measured: 4 × 512² refreshes 114 ms batched vs 90 ms
# one by one, 1 thread), so the CPU refreshes member by member; a GPU saves the launches.
BATCHED_REFRESH_DEVICES = ("cuda",)


class StackedSOAPSteps(StackedSteps):
    """Mixin for :class:`soapbench.optimizers.soap.SOAP`: ``step()`` by same-shape buckets (module docstring)."""

    def _bucket_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        """What same-shape members must share to be stepped together, or None (stepped alone)."""
        state = self.state.get(param)
        if not group.get("stack_shapes", True) or not state or "step" not in state:
            return None
        if group["bitwise_reference"] or group["normalize_grads"] or param.dim() != 2:
            return None
        compute_dtype = state_dtype_for(param.dtype)
        if param.dtype != compute_dtype or param.grad.dtype != compute_dtype or state["exp_avg"].dtype != compute_dtype:
            return None
        layout = self._layout(param, group)
        if layout.is_reshaped or not layout.preconditioned[1]:
            return None
        return (tuple(param.shape), param.dtype, param.device, state["step"], state["GG"][0] is None)

    def _step_stack(self, params: list[Tensor], group: dict[str, Any]) -> None:
        stacked = stacked_state(self, params, SLOTS)
        states = [self.state[param] for param in params]
        exp_avg, exp_avg_sq = stacked[("exp_avg",)], stacked[("exp_avg_sq",)]
        left, right = stacked[("Q", 0)], stacked[("Q", 1)]
        grads = torch.stack([param.grad for param in params])

        grad_rotated = rotate_matrix(grads, left, right)
        step = states[0]["step"] + 1
        for state in states:
            state["step"] = step
        normalized = self._adam_in_eigenbasis_(exp_avg, exp_avg_sq, grad_rotated, group)
        step_size = self._step_size(group, step)
        decay = 1.0 - group_lr(group) * group["weight_decay"] if group["weight_decay"] > 0.0 else 1.0
        half = normalized.mT if left is None else normalized.mT @ left.mT
        for param, half_one, right_one in zip(params, half.unbind(0), right.unbind(0)):
            param.addmm_(half_one.mT, right_one.mT, beta=decay, alpha=-step_size * decay)

        refresh = step % group["precondition_frequency"] == 0
        owned = [index for index, param in enumerate(params) if not refresh or self._computes_refresh(param)]
        if refresh and owned:
            rows = slice(None) if len(owned) == len(params) else torch.tensor(owned, device=grads.device)
            momentum = unrotate_matrix(exp_avg[rows], None if left is None else left[rows], right[rows])
        self._accumulate_stacked_factors(grads, stacked, group)
        if refresh:
            if owned:
                self._refresh_stack(params, owned, rows, stacked, group)
                new_left = stacked[("Q", 0)]
                exp_avg[rows] = rotate_matrix(momentum, None if new_left is None else new_left[rows], right[rows])
            for param, state in zip(params, states):
                self._publish_refreshed_state(param, state)

    def _accumulate_stacked_factors(self, grads: Tensor, stacked, group: dict[str, Any]) -> None:
        shampoo_beta = self._shampoo_beta(group)
        left, right = stacked[("GG", 0)], stacked[("GG", 1)]
        if grads.dtype != right.dtype:  # float64 factors (linalg_precision="float64") of float32 matrices
            grads = grads.to(right.dtype)
        for index, grad in enumerate(grads.unbind(0)):  # one addmm_ each: see the module docstring
            if left is not None:
                gram_update_(left[index], grad, beta=shampoo_beta, alpha=1.0 - shampoo_beta)
            gram_update_(right[index], grad.mT, beta=shampoo_beta, alpha=1.0 - shampoo_beta)

    def _refresh_stack(self, params: list[Tensor], owned: list[int], rows, stacked, group: dict[str, Any]) -> None:
        """Refresh the owned members' bases (dim 0, then dim 1) and permute their v to follow, in the stacks."""
        exp_avg_sq = stacked[("exp_avg_sq",)]
        if group["refresh_method"] != "qr" or exp_avg_sq.device.type not in BATCHED_REFRESH_DEVICES:
            # Member by member (the per-parameter code), then the new bases back into the stacks.
            for index in owned:
                state = self.state[params[index]]
                self._refresh_bases(state, group, self._layout(params[index], group), state["exp_avg_sq"])
                for dim in (0, 1):
                    if state["Q"][dim] is not None:
                        rebind(state, ("Q", dim), stacked, index)
            return
        second_moment = exp_avg_sq[rows]
        for dim in (0, 1):
            factor, basis = stacked[("GG", dim)], stacked[("Q", dim)]
            if factor is None:
                continue
            new_basis, permutation = power_qr_refresh(
                factor[rows], basis[rows], sort=True, precision=group["linalg_precision"], exact_estimate=False,
                health=self.linalg_health,
            )  # fmt: skip
            second_moment = select_along(second_moment, dim + 1, permutation)
            basis[rows] = new_basis
        exp_avg_sq[rows] = second_moment
