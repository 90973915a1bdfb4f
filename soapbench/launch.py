"""Placement of sweep jobs (one GPU per concurrent job, or a fair share of the CPU cores), and jobs that die with
the driver that started them.

Hydra's joblib launcher runs ``n_jobs`` runs at once in worker processes. With several GPUs
a job takes GPU ``job_num % gpu_count`` (so ``n_jobs = gpu_count`` keeps one run per GPU);
on a CPU each job gets ``cores // n_jobs`` threads so concurrent runs do not oversubscribe
the machine (which would distort every wall-clock number).

A driver (``scripts/reproduce.py``) starts each job in its own session, so Ctrl-C reaches the driver
alone and it stops the jobs in order. A driver killed outright (SIGKILL, the OOM killer) runs no
handler, so each job also asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``,
Linux), and is told its parent's pid (``SOAPBENCH_PARENT_PID``), which the trainer polls where
the kernel cannot do this: either way the job checkpoints and exits resumably instead of training
on unobserved and holding its run's lock against the next reproduction.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
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


PARENT_ENV = "SOAPBENCH_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    prctl = None
    if sys.platform.startswith("linux"):
        try:  # looked up here, before the fork: the child should only make the call
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None

    def in_child() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def start_owned_job(command: Sequence[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a job in its own session, appending to ``log_path``; it gets SIGTERM if this process dies."""
    with open(log_path, "a", encoding="utf-8") as handle:  # the child keeps its own descriptor
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        return subprocess.Popen(
            list(command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**env, PARENT_ENV: str(os.getpid())},
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )
