"""What the eigenbasis family (Shampoo, SOAP, SOAP-Muon, KL-Shampoo, KL-SOAP) shares about its refreshes:
linear-algebra health counters, and spreading the refreshes across data-parallel ranks.

Health: every eigh/QR/root goes through :mod:`soapbench.optimizers.linalg`, which counts float64 retries and failures (the
previous basis kept) in the optimizer's ``linalg_health``; ``diagnostics()`` reports them to the trainer's log.

Sharing:

Under DDP every rank holds the same parameters, the same (all-reduced) gradients and therefore the same optimizer
state, so without help every rank computes every eigenbasis / inverse-root refresh: W ranks do W times the work of
one. With sharing on, each parameter has one *owner* rank; at a refresh only the owner computes it, and the
refreshed state tensors are then broadcast from their owners (one broadcast per owner rank and dtype, flattened).
The owner runs exactly the code a single process runs, so the result equals the non-distributed optimizer bit for
bit, given identical inputs on every rank; ``tests/test_refresh_sharing.py`` checks that for every optimizer with
refreshes.

Ownership is a longest-processing-time split of the parameters by an estimate of their refresh cost (Σ d³ over
the preconditioned dims), computed identically on every rank from the param groups, so no rank ever waits on a
plan. Every rank still keeps the full state (factors included): rank 0 checkpoints it, and a run can resume on any
number of processes.

The family's base, :class:`soapbench.optimizers.eigenbasis.EigenbasisOptimizer`, holds a :class:`RefreshSharing`
once ``share_refreshes()`` is called; each optimizer's step:

* asks ``_computes_refresh(param)`` before computing a parameter's refresh (first-call bases too);
* hands the refreshed tensors to ``_publish_refresh(param, slots)`` on *every* rank, in the same order;
* and the template's ``step()`` synchronises where the refreshed state is next needed: after every parameter's step,
  which for Shampoo is before its directions, because its roots are used in the step that computes them.

Host syncs (audit, ``tests/test_host_sync.py``): a plain step of every optimizer in the family reads no tensor
value on the host (no ``.item()``, ``bool(tensor)``, ``.tolist()``, ``.cpu()``, no Python branch on a tensor), so on
a GPU it only queues kernels (a tensor ``lr`` is the one exception: ``stepping.group_lr`` reads it once per group
and step). Reads are confined to refresh steps: each eigh/QR/root checks its output is finite
(``linalg.is_finite``, one reduction read per decomposition) before it may replace the previous basis, and refresh
sharing reads strides and health counters after its broadcasts. The trainer reads the step's loss once per step,
after the step clock's synchronisation, so that read adds no stall of its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from soapbench.optimizers.linalg import LinalgHealth

# Where a published tensor goes back: a (container, key) pair, so the received value replaces the state entry.
Slot = tuple[Any, Any]


class RefreshSharing:
    """Who refreshes which parameter, and the broadcast that hands the result to every other rank."""

    def __init__(self, process_group: dist.ProcessGroup | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "refresh sharing needs an initialised torch.distributed process group (run under torchrun)"
            )
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        self._owners: dict[int, int] = {}
        self._plan_key: tuple[int, ...] = ()
        self._pending: list[tuple[int, list[Slot]]] = []
        self._synced_health = (0, 0)

    def plan(self, params: list[Tensor], cost: Callable[[Tensor], float]) -> None:
        """Assign owners (largest cost first to the least-loaded rank); redone only when the parameters change."""
        key = tuple(id(param) for param in params)
        if key == self._plan_key:
            return
        loads = [0.0] * self.world_size
        owners: dict[int, int] = {}
        by_cost = sorted(range(len(params)), key=lambda index: (-cost(params[index]), index))
        for index in by_cost:
            rank = min(range(self.world_size), key=lambda r: (loads[r], r))
            owners[id(params[index])] = rank
            loads[rank] += cost(params[index])
        self._owners, self._plan_key = owners, key

    def owner(self, param: Tensor) -> int:
        return self._owners[id(param)]

    def owns(self, param: Tensor) -> bool:
        return self.owner(param) == self.rank

    def publish(self, param: Tensor, slots: Iterable[Slot]) -> None:
        self._pending.append((self.owner(param), list(slots)))

    def synchronize(self, health: LinalgHealth) -> None:
        """Broadcast every published tensor from its owner, which receivers store with the owner's strides."""
        pending, self._pending = self._pending, []
        if not pending:  # every rank has the same refresh steps, so all of them skip together
            return
        buckets: dict[tuple[int, torch.dtype, torch.device], list[Slot]] = defaultdict(list)
        for owner, slots in pending:
            for container, key in slots:
                tensor = container[key]
                buckets[(owner, tensor.dtype, tensor.device)].append((container, key))
        for (owner, dtype, device), slots in buckets.items():
            tensors = [container[key] for container, key in slots]
            source = dist.get_global_rank(self.process_group, owner) if self.process_group else owner
            if self.rank == owner:
                tensors = [_dense(tensor) for tensor in tensors]
                for (container, key), tensor in zip(slots, tensors):
                    container[key] = tensor
            # Strides travel too: a receiver stores the owner's memory layout, which can decide a GEMM's rounding.
            strides = torch.tensor([s for t in tensors for s in t.stride()], dtype=torch.int64)
            strides = strides.to(device) if device.type == "cuda" else strides
            dist.broadcast(strides, src=source, group=self.process_group)
            if self.rank == owner:
                flat = torch.cat([_memory_order(tensor).reshape(-1) for tensor in tensors])
            else:
                flat = torch.empty(sum(t.numel() for t in tensors), dtype=dtype, device=device)
            dist.broadcast(flat, src=source, group=self.process_group)
            if self.rank == owner:
                continue
            stride_list, offset = strides.tolist(), 0
            for (container, key), tensor, chunk in zip(slots, tensors, flat.split([t.numel() for t in tensors])):
                stride = tuple(stride_list[offset : offset + tensor.dim()])
                offset += tensor.dim()
                received = torch.empty_strided(tensor.shape, stride, dtype=dtype, device=device)
                _memory_order(received).view(-1).copy_(chunk)
                container[key] = received
        self._merge_health(health)

    def _merge_health(self, health: LinalgHealth) -> None:
        """Sum the ranks' new linear-algebra failures/retries, so every rank (and rank 0's log) counts them all."""
        failures, retries = self._synced_health
        delta = torch.tensor([health.failures - failures, health.float64_retries - retries], dtype=torch.float64)
        if dist.get_backend(self.process_group) == "nccl":
            delta = delta.cuda()
        dist.all_reduce(delta, group=self.process_group)
        health.failures = failures + int(delta[0].item())
        health.float64_retries = retries + int(delta[1].item())
        self._synced_health = (health.failures, health.float64_retries)


def _memory_order(tensor: Tensor) -> Tensor:
    """A view of a dense tensor with its dims ordered by stride, so it is contiguous (flat = memory order)."""
    order = sorted(range(tensor.dim()), key=lambda dim: (-tensor.stride(dim), dim))
    return tensor.permute(order)


def _dense(tensor: Tensor) -> Tensor:
    """The tensor itself when it covers its memory densely (any dim order), else a contiguous copy."""
    return tensor if _memory_order(tensor).is_contiguous() else tensor.contiguous()


def cubic_refresh_cost(param: Tensor) -> float:
    """Σ d³ over the dims of a parameter with ≥ 2 dims (an eigh/QR of each factor); 1-D parameters cost ~nothing."""
    if param.dim() < 2:
        return 1.0
    return float(sum(size**3 for size in param.shape))


def share_refreshes(optimizer: torch.optim.Optimizer, process_group: dist.ProcessGroup | None = None) -> list[str]:
    """Turn refresh sharing on for ``optimizer`` (or a CompositeOptimizer's children); the classes that took it."""
    # Asked by method, not by base class: this module is below the optimizers that hold a RefreshSharing.
    children = getattr(optimizer, "optimizers", {"": optimizer})
    enabled = []
    for child in children.values():
        if callable(getattr(child, "share_refreshes", None)):
            child.share_refreshes(process_group)
            enabled.append(type(child).__name__)
    return enabled
