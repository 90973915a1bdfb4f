"""Placement of sweep jobs: one GPU per concurrent job, or a fair share of the CPU cores.

Hydra's joblib launcher runs ``n_jobs`` runs at once in worker processes. With several GPUs
a job takes GPU ``job_num % gpu_count`` (so ``n_jobs = gpu_count`` keeps one run per GPU);
on a CPU each job gets ``cores // n_jobs`` threads so concurrent runs do not oversubscribe
the machine (which would distort every wall-clock number).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from soapbench.environment import available_cores


def placement(job_num: int, concurrent_jobs: int, device: str) -> dict[str, Any]:
    """Return ``{"device": ..., "threads": ...}`` for a sweep job (threads None: leave torch's default)."""
    gpus = torch.cuda.device_count()
    if device == "auto" and gpus > 1:
        return {"device": f"cuda:{job_num % gpus}", "threads": None}
    if concurrent_jobs > 1 and (device == "cpu" or (device == "auto" and gpus == 0)):
        return {"device": device, "threads": max(1, available_cores() // concurrent_jobs)}
    return {"device": device, "threads": None}


def concurrent_jobs_from_hydra(hydra_cfg: Any) -> int:
    launcher = hydra_cfg.launcher
    if "Joblib" in str(launcher.get("_target_", "")):
        n_jobs = int(launcher.get("n_jobs") or 1)
        return n_jobs if n_jobs > 0 else (os.cpu_count() or 1)
    return 1
