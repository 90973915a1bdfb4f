"""SOAP-Muon's step per shape: same-shape matrices of a param group stepped as one stack (optimizers/batching.py).

Issued once per bucket instead of once per matrix: the projections into and out of the one-sided (or full)
eigenbasis, the moments, the Newton–Schulz iteration (batched products, each matrix normalised by its own norm),
the square-root correction and rescaling, and the factor EMAs. The QR refreshes (every f steps) run member by member
through the per-parameter code and are copied into the stacks; each parameter's ``W ← W − α U − ηλ W`` stays its
own (the parameters are separate tensors).

Same math per matrix, same rounding: on CPU each kernel computes every matrix of a stack exactly as it computes
that matrix alone, so stacked SOAP-Muon is bit-identical to per-parameter SOAP-Muon (``tests/test_stacked_steps.py``
at one and two threads); refresh sharing is unchanged (refreshes are per member).

A parameter joins a bucket when it is a 2-D matrix of the compute dtype (bf16 params and conv kernels step alone),
already initialised, with a left, right or full projection; members also share their step count and projection.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.batching import StackedSteps, rebind, stacked_state
from soapbench.optimizers.soap_muon_math import project, project_back
from soapbench.optimizers.state import state_dtype_for
from soapbench.optimizers.stepping import group_lr


class StackedSOAPMuonSteps(StackedSteps):
    """Mixin for :class:`soapbench.optimizers.soap_muon.SOAPMuon`: ``step()`` by same-shape buckets (module docstring)."""

    def _bucket_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        state = self.state.get(param)
        if not group.get("stack_shapes", True) or not state or param.dim() != 2:
            return None
        compute_dtype = state_dtype_for(param.dtype)
        if param.dtype != compute_dtype or param.grad.dtype != compute_dtype or state["projection"] == "identity":
            return None
        return (tuple(param.shape), param.dtype, param.device, state["step"], state["projection"])

    def _step_stack(self, params: list[Tensor], group: dict[str, Any]) -> None:
        states = [self.state[param] for param in params]
        sides = self._sides(states[0])
        slots = [("exp_avg",), ("exp_avg_sq",), *((f"factor_{side}",) for side in sides),
                 *((f"basis_{side}",) for side in sides)]  # fmt: skip
        stacked = stacked_state(self, params, slots)
        bases = {
            "projection": states[0]["projection"],
            **{f"basis_{side}": stacked[(f"basis_{side}",)] for side in sides},
        }
        grads = torch.stack([param.grad for param in params])
        grad_projected = project(grads, bases)
        step = states[0]["step"] + 1
        for state in states:
            state["step"] = step
        exp_avg, exp_avg_sq = stacked[("exp_avg",)], stacked[("exp_avg_sq",)]
        step_size, direction = self._direction(grads, grad_projected, exp_avg, exp_avg_sq, bases, group, step)
        update = project_back(direction, bases)
        lr, weight_decay = group_lr(group), group["weight_decay"]
        for param, member in zip(params, update.unbind(0)):
            param.add_(member, alpha=-step_size)
            if weight_decay > 0.0:
                param.add_(param, alpha=-lr * weight_decay)

        factor_beta = self._factor_beta(group)
        for side in sides:
            gram = grads @ grads.mT if side == "left" else grads.mT @ grads
            stacked[(f"factor_{side}",)].lerp_(gram, 1 - factor_beta)
        if step % group["precondition_frequency"] == 0:
            for index, (param, state) in enumerate(zip(params, states)):
                if self._computes_refresh(param):
                    self._refresh_bases(state, state["exp_avg_sq"])
                    for side in sides:
                        rebind(state, (f"basis_{side}",), stacked, index)
                slots_out = [(state, f"basis_{side}") for side in sides]
                self._publish_refresh(param, [*slots_out, (state, "exp_avg_sq")])
