"""Sweep-job placement: one GPU per job when there are several, a fair share of the cores otherwise."""

from __future__ import annotations

import os

import torch

from soapbench.launch import placement


def test_several_gpus_get_one_job_each(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [placement(n, 4, "auto")["device"] for n in range(6)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
        "cuda:1",
    ]


def test_cpu_jobs_share_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert placement(0, 4, "auto") == {"device": "auto", "threads": 2}
    assert placement(0, 16, "cpu")["threads"] == 1
    assert placement(3, 1, "auto")["threads"] is None


def test_an_explicit_device_is_respected(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert placement(2, 4, "cuda:3")["device"] == "cuda:3"


def test_multi_task_submitit_job_gets_torchrun_variables(monkeypatch) -> None:
    from soapbench.distributed import export_slurm_environment

    # A private copy of the environment: export writes os.environ directly, and the copy keeps that in this test.
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    monkeypatch.setattr(os, "environ", environment)
    slurm = {
        "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1",
    }  # fmt: skip
    environment.update(slurm)
    export_slurm_environment()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
    assert os.environ["MASTER_ADDR"] == "gpu07" and int(os.environ["MASTER_PORT"]) > 0
