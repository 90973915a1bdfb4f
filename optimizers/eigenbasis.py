"""The eigenbasis family's one ``step()``: Shampoo, SOAP, SOAP-Muon, KL-Shampoo and KL-SOAP each subclass
:class:`EigenbasisOptimizer` directly and keep all of their math, per parameter and per stack, in their own module.

The template, :meth:`EigenbasisOptimizer.step`, for every optimizer of the family:

1. the closure's loss, with autograd on;
2. under refresh sharing, each parameter's owner rank (planned again only when the parameters change);
3. the parameters with a gradient, per param group, in *buckets*: same-shape members with the same
   ``_bucket_key`` are stepped as one stack (:mod:`soapbench.optimizers.batching`); a None key, or the group's
   ``stack_shapes=False``, steps a parameter alone;
4. a bucket of one through ``_step_param(param, group)``, a larger one through ``_step_stack(params, group)``; either
   may return the rest of its step, a callable that has to wait for the refreshes of every rank;
5. the refreshed state exchanged between ranks (``_synchronize_refreshes``);
6. the rests of step 4, in bucket order: Shampoo forms its direction here, because the inverse roots computed at a
   step are used in that same step, so every owner's roots must have arrived first;
7. the cached stacks that no bucket used in this step dropped (after a change of which parameters had gradients).

Hooks, implemented in each optimizer's own module:

* ``_step_param(param, group)``: one parameter's whole step, from its gradient (first call: its state);
* ``_bucket_key(param, group)``: what same-shape members must share to be stepped together, or None (alone);
* ``_step_stack(params, group)``: the same step for a bucket, bit for bit (``tests/test_stacked_steps.py``);
* ``_state_dtype(param, group, key)``: the dtype of ``state[key]``, to which a loaded checkpoint's state is cast;
* ``_refresh_cost(param)``: the estimate refresh sharing balances the ranks by (Σ d³ by default).

Cross-cutting concerns are held helpers, not base classes:

* refresh sharing is a :class:`~soapbench.optimizers.refreshes.RefreshSharing`, held once ``share_refreshes()`` is
  called. A step asks ``_computes_refresh(param)`` before computing a refresh, names the state entries a refresh
  rewrote with ``_publish_refresh`` on every rank, and the template synchronises (step 5);
* the stacks are :class:`~soapbench.optimizers.batching.StackedState` objects, cached on the optimizer per bucket by
  :func:`~soapbench.optimizers.batching.stacked_state` and restacked when something replaced a member's tensor;
* loaded state keeps the dtypes the optimizer allocates
  (:func:`soapbench.optimizers.state.load_state_dict_keeping_dtypes`);
* linear-algebra health is a held :class:`~soapbench.optimizers.linalg.LinalgHealth`, which every eigh/QR/root of
  :mod:`soapbench.optimizers.linalg` counts into and ``diagnostics()`` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from soapbench.optimizers.batching import forget_stale_stacks, group_buckets
from soapbench.optimizers.linalg import LinalgHealth
from soapbench.optimizers.refreshes import RefreshSharing, Slot, cubic_refresh_cost
from soapbench.optimizers.state import load_state_dict_keeping_dtypes, state_dtype_for
from soapbench.optimizers.stepping import closure_loss

# What _step_param / _step_stack may hand back: the part of the step that needs every rank's refreshes.
RestOfStep = Callable[[], None]


class EigenbasisOptimizer(torch.optim.Optimizer):
    """Base of the eigenbasis family: the shared ``step()`` template and the helpers it holds (module docstring)."""

    # A class default rather than an attribute set in __init__: torch's __setstate__ (copy.deepcopy, pickle) restores
    # only defaults, state and param_groups, and a copy does not share refreshes until it is told to.
    _refresh_sharing: RefreshSharing | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        self._plan_refreshes()
        rests: list[RestOfStep] = []
        for group, bucket in group_buckets(self, self._stacking_key):
            rest = self._step_param(bucket[0], group) if len(bucket) == 1 else self._step_stack(bucket, group)
            if rest is not None:
                rests.append(rest)
        self._synchronize_refreshes()
        for rest in rests:
            rest()
        forget_stale_stacks(self)
        return loss

    def _stacking_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        return self._bucket_key(param, group) if group.get("stack_shapes", True) else None

    # ------------------------------------------------------------------------------------------------------------
    # Hooks
    # ------------------------------------------------------------------------------------------------------------

    def _step_param(self, param: Tensor, group: dict[str, Any]) -> RestOfStep | None:
        raise NotImplementedError

    def _bucket_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        return None

    def _step_stack(self, params: list[Tensor], group: dict[str, Any]) -> RestOfStep | None:
        raise NotImplementedError

    def _state_dtype(self, param: Tensor, group: dict[str, Any], key: str) -> torch.dtype:
        return state_dtype_for(param.dtype)

    def _refresh_cost(self, param: Tensor) -> float:
        return cubic_refresh_cost(param)

    # ------------------------------------------------------------------------------------------------------------
    # State dtypes and linear-algebra health
    # ------------------------------------------------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_state_dict_keeping_dtypes(self, super().load_state_dict, state_dict, self._state_dtype)

    @property
    def linalg_health(self) -> LinalgHealth:
        """This optimizer's linear-algebra counters (created on first use, so a restored copy has them too)."""
        health = self.__dict__.get("_linalg_health")
        if health is None:
            health = self.__dict__["_linalg_health"] = LinalgHealth()
        return health

    def diagnostics(self) -> dict[str, float]:
        """Counters for the trainer's log: linear-algebra failures (previous basis or root kept), float64 retries."""
        return self.linalg_health.diagnostics()

    # ------------------------------------------------------------------------------------------------------------
    # Refresh sharing (soapbench.optimizers.refreshes)
    # ------------------------------------------------------------------------------------------------------------

    def share_refreshes(self, process_group: dist.ProcessGroup | None = None) -> None:
        """From the next step on, each rank refreshes only the parameters it owns (all ranks must call step)."""
        self._refresh_sharing = RefreshSharing(process_group)

    @property
    def shares_refreshes(self) -> bool:
        return self._refresh_sharing is not None and self._refresh_sharing.world_size > 1

    def _plan_refreshes(self) -> None:
        if self.shares_refreshes:
            params = [param for group in self.param_groups for param in group["params"]]
            self._refresh_sharing.plan(params, self._refresh_cost)

    def _computes_refresh(self, param: Tensor) -> bool:
        """Whether this rank computes ``param``'s refresh: always without sharing, else only on its owner."""
        return not self.shares_refreshes or self._refresh_sharing.owns(param)

    def _publish_refresh(self, param: Tensor, slots: Iterable[Slot]) -> None:
        """Mark the state entries a refresh of ``param`` rewrote (on every rank, in the same order)."""
        if self.shares_refreshes:
            self._refresh_sharing.publish(param, slots)

    def _synchronize_refreshes(self) -> None:
        if self.shares_refreshes:
            self._refresh_sharing.synchronize(self.linalg_health)
