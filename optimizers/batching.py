"""Per shape, not per parameter: same-shape parameters' optimizer state kept in shared stacks.

A 24-layer LM has 24 copies of each matrix shape. Stepping them one by one issues every kernel 24 times, so on a
GPU the step is launch-bound long before it is FLOP-bound, and on a CPU the Python around each small kernel
dominates. The eigenbasis optimizers therefore step a *bucket* of same-shape parameters together: their moments,
factors and bases live as slices of ``B×…`` stacks, and rotations, moment updates and refresh products run as one
batched call per bucket.

Each parameter's ``optimizer.state[p]`` still holds its own tensors, as views into the stacks, so ``state_dict``,
checkpoints, refresh sharing and every per-parameter code path see the usual per-parameter state. Anything that
replaces a state tensor instead of writing into it (``load_state_dict``, a refresh broadcast from another rank, a
per-parameter fallback that assigns a new basis) breaks the view; :meth:`StackedState.intact` notices, and the
optimizer restacks the bucket from the per-parameter tensors (one copy) before its next batched step.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.stepping import params_with_grads

# Where a state tensor sits in ``optimizer.state[p]``: ``(key,)`` for ``state[key]``, ``(key, i)`` for
# ``state[key][i]``, ``(key, i, j)`` for ``state[key][i][j]``.
Slot = tuple[Any, ...]


def _container(state: dict[str, Any], slot: Slot) -> Any:
    container: Any = state
    for key in slot[:-1]:
        container = container[key]
    return container


def _get(state: dict[str, Any], slot: Slot) -> Tensor | None:
    return _container(state, slot)[slot[-1]]


def _set(state: dict[str, Any], slot: Slot, value: Tensor) -> None:
    _container(state, slot)[slot[-1]] = value


def rebind(state: dict[str, Any], slot: Slot, stacked: StackedState, index: int) -> None:
    """After per-parameter code assigned ``state``'s entry a new tensor: copy it into the stack, point back at it."""
    view = stacked.view(slot, index)
    value = _get(state, slot)
    if value is not view:
        view.copy_(value)
        _set(state, slot, view)


class StackedState:
    """The state of same-shape parameters as ``B×…`` stacks, each parameter's state entries views into them."""

    def __init__(self, params: Sequence[Tensor], states: Sequence[dict[str, Any]], slots: Iterable[Slot]):
        self.params = list(params)
        self.stacks: dict[Slot, Tensor | None] = {}
        self._views: dict[Slot, list[Tensor]] = {}
        for slot in slots:
            tensors = [_get(state, slot) for state in states]
            if tensors[0] is None:  # e.g. no basis on an unpreconditioned dim: the same for every member
                self.stacks[slot] = None
                continue
            stack = torch.stack(tensors)
            views = list(stack.unbind(0))
            for state, view in zip(states, views):
                _set(state, slot, view)
            self.stacks[slot], self._views[slot] = stack, views

    def intact(self, states: Sequence[dict[str, Any]]) -> bool:
        """Whether every member's state entries are still this stack's views (nothing replaced them)."""
        for slot, views in self._views.items():
            for state, view in zip(states, views):
                if _get(state, slot) is not view:
                    return False
        return True

    def __getitem__(self, slot: Slot) -> Tensor | None:
        return self.stacks[slot]

    def view(self, slot: Slot, index: int) -> Tensor:
        return self._views[slot][index]


def stacked_state(optimizer: torch.optim.Optimizer, params: Sequence[Tensor], slots: Sequence[Slot]) -> StackedState:
    """The optimizer's stacks for exactly these parameters, restacked if anything replaced a member's tensors.

    Stacks are cached on the optimizer per member list; lists not stepped together since the last call are dropped
    by :func:`forget_stale_stacks`.
    """
    cache: dict[tuple[int, ...], StackedState] = optimizer.__dict__.setdefault("_stacked_states", {})
    key = tuple(id(param) for param in params)
    states = [optimizer.state[param] for param in params]
    stacked = cache.get(key)
    if stacked is None or not stacked.intact(states):
        stacked = cache[key] = StackedState(params, states, slots)
    optimizer.__dict__.setdefault("_stacks_used", set()).add(key)
    return stacked


def forget_stale_stacks(optimizer: torch.optim.Optimizer) -> None:
    """Drop the cached stacks no bucket used in this step (after a change of which parameters had gradients)."""
    cache = optimizer.__dict__.get("_stacked_states", {})
    used = optimizer.__dict__.pop("_stacks_used", set())
    for key in [key for key in cache if key not in used]:
        del cache[key]


def group_buckets(
    optimizer: torch.optim.Optimizer, key_of: Callable[[Tensor, dict[str, Any]], Hashable | None]
) -> Iterator[tuple[dict[str, Any], list[Tensor]]]:
    """``(group, bucket)`` for the parameters with a gradient: per param group, same ``key_of(param, group)``.

    A None key steps alone; buckets come in order of their first member, so every rank steps them identically.
    """
    entries = [(group, param, key_of(param, group)) for group, param in params_with_grads(optimizer)]
    for group in optimizer.param_groups:
        for bucket in buckets([(param, key) for owner, param, key in entries if owner is group]):
            yield group, bucket


def buckets(
    entries: Iterable[tuple[Tensor, Hashable | None]],
) -> list[list[Tensor]]:
    """Group ``(param, key)`` pairs by key, in order of first appearance; a None key is a bucket of its own."""
    ordered: list[list[Tensor]] = []
    by_key: dict[Hashable, list[Tensor]] = {}
    for param, key in entries:
        if key is None:
            ordered.append([param])
        elif key in by_key:
            by_key[key].append(param)
        else:
            by_key[key] = [param]
            ordered.append(by_key[key])
    return ordered
