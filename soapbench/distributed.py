"""Data-parallel runs under ``torchrun``: NCCL on GPUs, gloo on CPU (tests, CI).

``trainer.batch_size`` is always the *global* micro-batch: with W processes each rank takes
its 1/W slice of the very batch a single process would draw, and DDP averages the
gradients, so a run's result does not depend on how many processes computed it (up to
the summation order of the all-reduce). Rank 0 alone writes files and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from soapbench.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: int) -> slice:
        if global_batch % self.world_size:
            raise ConfigError(
                f"trainer.batch_size: {global_batch} is not divisible by the {self.world_size} processes; "
                f"use a multiple of {self.world_size}"
            )
        per_rank = global_batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


def export_slurm_environment() -> None:
    """Inside a multi-task SLURM job started by submitit (``hydra/launcher=slurm`` with ``tasks_per_node`` > 1),
    set the variables torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from SLURM's.

    A task started by torchrun, or a single-task job, is left alone.
    """
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    if "SUBMITIT_FOLDER" not in os.environ and "SUBMITIT_EXECUTOR" not in os.environ:
        return  # a plain srun/sbatch job: the user's own launcher decides
    from submitit.helpers import TorchDistributedEnvironment

    # Keep every GPU visible: the trainer picks cuda:LOCAL_RANK itself.
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_from_environment() -> DistContext:
    """Join the process group torchrun (or a multi-task submitit job) describes (no-op for a single process)."""
    export_slurm_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def mean_across_ranks(value: torch.Tensor, context: DistContext) -> torch.Tensor:
    if context.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= context.world_size
    return value


def any_rank(flag: bool, context: DistContext) -> bool:
    """True on every rank if it is true on any: a stop request must stop all ranks at the same step."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj: Any, context: DistContext) -> list[Any]:
    """Every rank's ``obj`` (e.g. its RNG state), in rank order, on every rank."""
    if not context.enabled:
        return [obj]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, context: DistContext) -> Any:
    if not context.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistContext) -> None:
    """Leave the process group together: a rank tearing gloo down while another still talks aborts the job."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
