"""Sweep-job placement: one GPU per job when there are several, a fair share of the cores otherwise."""

from __future__ import annotations

import torch

from soapbench.launch import placement


def test_several_gpus_get_one_job_each(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [placement(n, 4, "auto")["device"] for n in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]


def test_cpu_jobs_share_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert placement(0, 4, "auto") == {"device": "auto", "threads": 2}
    assert placement(0, 16, "cpu")["threads"] == 1
    assert placement(3, 1, "auto")["threads"] is None


def test_an_explicit_device_is_respected(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert placement(2, 4, "cuda:3")["device"] == "cuda:3"
