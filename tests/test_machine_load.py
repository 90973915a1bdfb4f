"""Honest wall-clock on a shared machine: the slowed-step rule on synthetic timings, the shared-machine
verdict, the thread policy, and run segments across a resume with a different thread count."""

from __future__ import annotations

import json

import pytest
import torch

from soapbench import machine_load
from soapbench.machine_load import MEDIAN_MIN_STEPS, MachineLoad, machine_shared, segments_differ
from soapbench.results import RunStore
from soapbench.trainer import TIMING_KEYS
from tests.conftest import run_cli, train_in_process


def _monitor(
    threads: int, load: float | None = 0.5, *, cores: int = 2, parallel_jobs: int = 1, segments=None
) -> MachineLoad:
    return MachineLoad(
        [] if segments is None else segments, start_step=0, device=f"cpu:test x{threads} threads", cpu_model="test CPU",
        threads=threads, parallel_jobs=parallel_jobs, cores=cores, load=lambda: load,
    )  # fmt: skip


def test_one_thread_step_is_slowed_when_wall_exceeds_one_and_a_half_cpu() -> None:
    monitor = _monitor(threads=1, load=5.0)
    assert not monitor.step(1, wall=0.100, cpu=0.095)
    assert not monitor.step(2, wall=0.149, cpu=0.100)
    assert monitor.step(3, wall=0.151, cpu=0.100)
    # A slow step that burned CPU all along (a preconditioner refresh) is the step's own work.
    for step in range(4, 4 + MEDIAN_MIN_STEPS):
        monitor.step(step, wall=0.1, cpu=0.1)
    assert not monitor.step(20, wall=1.0, cpu=1.0), "one thread: the median rule does not apply"
    assert monitor.segment["slowed_steps"] == 1 and monitor.segment["steps"] == 3 + MEDIAN_MIN_STEPS + 1


def test_several_threads_use_the_running_median_only_while_the_load_says_others_run() -> None:
    # Two spinning threads: CPU time is twice the wall time, so wall > 1.5 x cpu can never fire.
    busy, idle = _monitor(threads=2, load=3.9), _monitor(threads=2, load=2.1)
    for monitor in (busy, idle):
        for step in range(1, MEDIAN_MIN_STEPS + 1):
            assert not monitor.step(step, wall=0.1, cpu=0.2)
    assert busy.step(9, wall=0.16, cpu=0.32), "a step 1.6x the median on a loaded machine is slowed"
    assert not busy.step(10, wall=0.14, cpu=0.28)
    assert not idle.step(9, wall=0.5, cpu=1.0), "on an idle machine a slow step is its own work (a refresh)"


def test_the_median_needs_a_few_steps_first() -> None:
    monitor = _monitor(threads=4, load=9.0)
    monitor.step(1, wall=0.1, cpu=0.4)
    assert not monitor.step(2, wall=1.0, cpu=4.0), "too few steps for a median (the first steps warm up)"


def test_log_event_reports_mean_cpu_per_step_and_the_load_then_starts_a_new_window() -> None:
    loads = iter([0.2, 1.7, 0.9])
    monitor = MachineLoad(
        [], start_step=0, device="cpu", cpu_model="test", threads=1, cores=2, load=lambda: next(loads)
    )
    monitor.step(1, wall=0.2, cpu=0.1)
    monitor.step(2, wall=0.2, cpu=0.3)
    assert monitor.log_event() == {"train/cpu_seconds": pytest.approx(0.2), "system/load1": 1.7}
    monitor.step(3, wall=0.2, cpu=0.5)
    assert monitor.log_event() == {"train/cpu_seconds": pytest.approx(0.5), "system/load1": 0.9}
    assert monitor.segment["max_load"] == 1.7
    assert {"train/cpu_seconds", "system/load1"} <= set(TIMING_KEYS)


def test_a_segment_joins_the_run_at_its_first_step() -> None:
    segments = [{"start_step": 0, "end_step": 5}]
    monitor = _monitor(threads=1, segments=segments)
    assert len(segments) == 1, "a process that trains nothing adds no segment"
    monitor.step(6, wall=0.1, cpu=0.1)
    monitor.step(7, wall=0.3, cpu=0.1)
    assert len(segments) == 2 and segments[-1] is monitor.segment
    assert {k: segments[-1][k] for k in ("start_step", "end_step", "steps", "slowed_steps")} == {
        "start_step": 0, "end_step": 7, "steps": 2, "slowed_steps": 1,
    }  # fmt: skip
    assert segments[-1]["wall_seconds"] == pytest.approx(0.4) and segments[-1]["cpu_seconds"] == pytest.approx(0.2)


def _segment(**fields) -> dict:
    base = {"start_step": 0, "end_step": 100, "steps": 100, "slowed_steps": 0, "max_load": 1.0, "threads": 1,
            "jobs": 1, "cores": 2, "device": "cpu:x 1 threads", "cpu_model": "A"}  # fmt: skip
    return base | fields


def test_the_verdict_names_each_reason_in_one_line() -> None:
    idle = machine_shared([_segment(slowed_steps=5, max_load=1.4)])
    assert idle == {"shared": False, "slowed_fraction": 0.05, "max_load": 1.4, "cores": 2, "reasons": []}
    slowed = machine_shared([_segment(slowed_steps=12)])
    assert slowed["shared"] and slowed["reasons"] == ["12.0% of steps slowed >1.5x (wall/CPU)"]
    loaded = machine_shared([_segment(max_load=3.9)])
    assert loaded["shared"] and loaded["reasons"] == ["load 3.9 on 2 cores"]
    # Two declared parallel jobs of one thread explain a load of 2.
    assert not machine_shared([_segment(max_load=2.3, jobs=2)])["shared"]
    # A big machine's daemons: load 3 beside one thread on 64 cores is not a shared machine; load 6 is.
    assert not machine_shared([_segment(max_load=3.0, cores=64)])["shared"]
    assert machine_shared([_segment(max_load=6.0, cores=64)])["reasons"] == ["load 6.0 on 64 cores"]
    resumed = machine_shared(
        [_segment(steps=50, end_step=50), _segment(start_step=50, steps=50, slowed_steps=10, max_load=4.2)]
    )
    assert resumed["slowed_fraction"] == 0.1 and resumed["max_load"] == 4.2
    assert resumed["reasons"] == ["10.0% of steps slowed >1.5x (wall/CPU)", "load 4.2 on 2 cores (steps 50-100)"]


def test_segments_differ_on_device_cpu_model_or_threads() -> None:
    assert not segments_differ([_segment(), _segment(start_step=100, slowed_steps=9)])
    assert segments_differ([_segment(), _segment(threads=2)])
    assert segments_differ([_segment(), _segment(cpu_model="B")])
    assert segments_differ([_segment(), _segment(device="cuda:H100")])


def test_default_threads_split_the_cores_between_the_jobs_on_the_machine(monkeypatch) -> None:
    monkeypatch.setattr(machine_load, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert machine_load.default_threads(1) == 16
    assert machine_load.default_threads(3) == 5
    assert machine_load.default_threads(32) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four ranks on this node
    assert machine_load.default_threads(1) == 4
    assert machine_load.jobs_on_this_machine(2) == 8


def test_a_resume_with_other_threads_adds_a_segment_and_marks_the_difference(results_dir) -> None:
    threads = torch.get_num_threads()
    try:
        first = train_in_process(["trainer.threads=1", "trainer.stop_after_steps=5"], results_dir)
        assert first["threads"] == 1 and first["device"].endswith("x1 threads")
        second = train_in_process(["trainer.threads=2"], results_dir)
    finally:
        torch.set_num_threads(threads)
    assert second["run_dir"] == first["run_dir"], "threads are not part of the run's identity"
    assert second["status"] == "completed" and second["threads"] == 2
    spans = [(s["start_step"], s["end_step"], s["steps"], s["threads"]) for s in second["segments"]]
    assert spans == [(0, 5, 5, 1), (5, 12, 7, 2)]
    assert second["segments_differ"] is True
    assert all(s["wall_seconds"] > 0 and s["cpu_seconds"] > 0 for s in second["segments"])
    assert second["segments"][1]["device"].endswith("x2 threads") and second["cpu_model"]
    shared = second["machine_shared"]
    assert set(shared) == {"shared", "slowed_fraction", "max_load", "cores", "reasons"}
    assert shared["slowed_fraction"] == sum(s["slowed_steps"] for s in second["segments"]) / 12
    on_disk = json.loads((results_dir / "runs" / "default" / second["run_name"] / "summary.json").read_text())
    assert on_disk["segments"] == second["segments"]
    train_records = [r for r in RunStore(second["run_dir"]).read_metrics() if r["event"] == "train"]
    assert train_records and all(r["train/cpu_seconds"] > 0 and "system/load1" in r for r in train_records)


@pytest.mark.parametrize(
    "value,message", [("0", "trainer.threads: must be > 0"), ("abc", "trainer.threads: expected an integer")]
)
def test_bad_thread_count_is_one_error_line_and_exit_2(results_dir, value, message) -> None:
    result = run_cli([f"trainer.threads={value}"], results_dir)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {message}"), line
    assert not (results_dir / "runs").exists(), "nothing is written for a rejected config"
