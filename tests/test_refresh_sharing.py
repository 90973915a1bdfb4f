"""Refresh sharing: two gloo ranks, each refreshing half the parameters, end bit-identical to one process.

Each rank steps the same optimizer on the same parameters and the same gradient sequence (what DDP hands every
rank after its all-reduce), with ``share_refreshes()`` on. The test counts the eigh/QR (geqrf) decompositions each rank makes (each matrix of a batched call), so
it also fails if sharing silently did nothing (every rank computing everything) or skipped work (fewer in total).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from soapbench.optimizers import build_optimizer
from soapbench.optimizers.refreshes import RefreshSharing, share_refreshes
from tests.conftest import assert_identical

STEPS = 9
# Hyperparameters that make every optimizer refresh several times within STEPS, factor 1-D and merged dims, and
# leave one dim unpreconditioned.
SETTINGS = {
    "soap": dict(precondition_frequency=2, max_precond_dim=40, precondition_1d=True, state_dtype="bfloat16"),
    # float32 moments: the square pair is stepped as one stack and each rank refreshes its own member of it.
    "soap stacked": dict(precondition_frequency=2, max_precond_dim=40),
    "shampoo": dict(precondition_frequency=2, max_preconditioner_dim=40),
    "kl_soap": dict(precondition_frequency=2),
    "kl_shampoo": dict(precondition_frequency=3),
    "soap_muon": dict(precondition_frequency=2),
}


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wide = torch.nn.Parameter(torch.randn(24, 48))
        self.square = torch.nn.Parameter(torch.randn(16, 16))
        # A same-shape pair, stepped as one stack where an optimizer stacks shapes; the two costliest refreshes, so
        # each rank owns one and refreshes its own part of the stack.
        self.twin_a = torch.nn.Parameter(torch.randn(40, 40))
        self.twin_b = torch.nn.Parameter(torch.randn(40, 40))
        self.tall = torch.nn.Parameter(torch.randn(36, 12))
        self.conv = torch.nn.Parameter(torch.randn(6, 4, 3, 3))
        self.bias = torch.nn.Parameter(torch.randn(16))


def _run(name: str, sharing: bool) -> tuple[dict, dict, int]:
    """Parameters, optimizer state and number of eigh/QR calls after STEPS steps of ``name`` on Toy."""
    torch.set_num_threads(1)  # the same kernels in the test process and in the spawned ranks
    torch.manual_seed(0)
    model = Toy()
    optimizer = build_optimizer(name.split()[0], model, **SETTINGS[name])
    if sharing:
        assert share_refreshes(optimizer), f"{name} does not share its refreshes"
    calls = 0
    originals = (torch.linalg.eigh, torch.geqrf)

    def counted(function):
        def wrapper(*args, **kwargs):
            nonlocal calls
            calls += args[0].shape[:-2].numel()  # a batched call on a stack counts each of its matrices
            return function(*args, **kwargs)

        return wrapper

    torch.linalg.eigh, torch.geqrf = counted(originals[0]), counted(originals[1])
    try:
        generator = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            for param in model.parameters():
                param.grad = torch.randn(param.shape, generator=generator) * 0.1
            optimizer.step()
    finally:
        torch.linalg.eigh, torch.geqrf = originals
    params = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return params, optimizer.state_dict(), calls


def _worker(rank: int, name: str, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.save(_run(name, sharing=True), Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_two_sharing_ranks_match_one_process_bitwise(tmp_path, name) -> None:
    single_params, single_state, single_calls = _run(name, sharing=False)
    mp.spawn(_worker, args=(name, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    for rank, (params, state, calls) in enumerate(ranks):
        assert_identical(params, single_params, f"rank {rank} params")
        assert_identical(state, single_state, f"rank {rank} state")
        assert 0 < calls < single_calls, f"rank {rank} made {calls} of the {single_calls} decompositions"
    assert sum(calls for _, _, calls in ranks) == single_calls


def test_sharing_needs_a_process_group() -> None:
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="torchrun"):
        RefreshSharing()


def test_owners_balance_refresh_cost() -> None:
    sharing = RefreshSharing.__new__(RefreshSharing)
    sharing.world_size, sharing.rank, sharing._plan_key = 2, 0, ()
    params = [torch.empty(size, size) for size in (64, 32, 32, 16, 16, 8)]
    sharing.plan(params, lambda p: float(p.shape[0] ** 3))
    loads = [sum(p.shape[0] ** 3 for p in params if sharing.owner(p) == rank) for rank in range(2)]
    assert sharing.owner(params[0]) == 0 and loads == [64**3, 2 * 32**3 + 2 * 16**3 + 8**3]
