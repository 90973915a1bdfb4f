"""Honest wall-clock on a shared machine: threads, process CPU time beside wall time, load, run segments.

Wall-clock comparisons mean something only if every run had the cores it asked for. This module
gives the trainer three things:

* the thread policy: ``trainer.threads`` intra-op threads, by default the available cores divided
  by the jobs sharing the machine (``trainer.parallel_jobs`` x torchrun's local processes), so
  concurrent runs do not oversubscribe the cores;
* per step, the process CPU time (``time.process_time``) over the same span as the step's wall
  clock, and at every log event the 1-minute load average;
* one *segment* per process that trains part of a run (a resume appends one), and a verdict on
  whether the machine was shared, both written to ``summary.json``.

The slowed-step rule. A step is *slowed* when its wall time exceeds 1.5x what its CPU time explains:

* every step: ``wall > 1.5 x cpu``. Exact for a one-thread process, which burns CPU for all of a
  step's wall time unless it waits for a core (the workloads do no I/O inside a step).
* with n > 1 threads, CPU time stops telling: OpenMP threads spin while they wait for a descheduled
  sibling, so a contended step can show ``cpu >= wall``. Such a step is also slowed when
  ``wall > 1.5 x`` the running median step wall time (the last ``MEDIAN_WINDOW`` steps, once
  ``MEDIAN_MIN_STEPS`` are in) *while the latest load average exceeds what this run explains*
  (its threads x the jobs sharing the machine): on an otherwise idle machine a slow step is its
  own work — a preconditioner refresh every f steps — not contention.

Limits: contention that lasts longer than the median's window becomes its baseline (the load
criterion still marks the run); with n threads on a loaded machine, refresh steps count as slowed
too, which overstates the fraction; the load average is a 1-minute mean sampled at log events, so
a burst shorter than that shows only in the step times. One thread per job keeps the rule exact.
On a GPU the rule holds because CUDA's default scheduling for a process with one context
spin-waits on the device (the waiting CPU thread stays busy); a process that switches to blocking
synchronisation would see every step as slowed.

A run is marked ``machine_shared`` when more than ``SHARED_SLOWED_FRACTION`` of its steps were
slowed, or when the load average seen by any segment exceeded what that segment's run explains
(its threads x the jobs sharing the machine) by more than ``LOAD_TOLERANCE`` plus
``LOAD_TOLERANCE_PER_CORE`` per core (background daemons, which grow with the machine); each reason
is one human-readable line.
"""

from __future__ import annotations

import os
import statistics
from collections import deque
from datetime import UTC, datetime
from typing import Any

import torch

from soapbench.environment import available_cores

SLOWED_RATIO = 1.5
SHARED_SLOWED_FRACTION = 0.05
LOAD_TOLERANCE = 0.5
LOAD_TOLERANCE_PER_CORE = 0.05
MEDIAN_WINDOW = 128
MEDIAN_MIN_STEPS = 8
# Segment fields that, when they differ, make the segments' step times incomparable.
_SEGMENT_IDENTITY = ("device", "cpu_model", "threads")


def jobs_on_this_machine(parallel_jobs: int) -> int:
    """Training processes sharing this machine: declared parallel jobs x torchrun's processes per node."""
    return parallel_jobs * int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def default_threads(parallel_jobs: int) -> int:
    return max(1, available_cores() // jobs_on_this_machine(parallel_jobs))


def apply_thread_policy(threads: int | None, parallel_jobs: int, device: torch.device) -> int:
    """Set torch's intra-op threads (on CPU always; on GPU only when asked) and return the count in use."""
    if threads is not None or device.type == "cpu":
        torch.set_num_threads(threads if threads is not None else default_threads(parallel_jobs))
    return torch.get_num_threads()


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not every platform has one
        return None


def load_exceeds_run(load: float | None, threads: int, jobs: int, cores: int) -> bool:
    """Whether a load average is more than this run's own threads (and its declared siblings') explain."""
    return load is not None and load > threads * jobs + LOAD_TOLERANCE + LOAD_TOLERANCE_PER_CORE * cores


class MachineLoad:
    """Bookkeeping for one segment; the trainer calls :meth:`step` once per step and :meth:`log_event` per log.

    ``segments`` is the run's list (restored from the checkpoint on resume); this process's segment
    is appended to it at its first step and updated in place, so checkpoints and summaries carry it.
    """

    def __init__(
        self,
        segments: list[dict[str, Any]],
        *,
        start_step: int,
        device: str,
        cpu_model: str,
        threads: int,
        parallel_jobs: int = 1,
        cores: int | None = None,
        load: Any = load_average,
    ) -> None:
        self.segments = segments
        self._load_average = load  # injectable for tests
        self._latest_load = load()
        self._walls: deque[float] = deque(maxlen=MEDIAN_WINDOW)
        self._window_cpu = 0.0
        self._window_steps = 0
        self.segment = {
            "start_step": start_step, "end_step": start_step, "device": device, "cpu_model": cpu_model,
            "threads": threads, "cores": cores if cores is not None else available_cores(),
            "jobs": jobs_on_this_machine(parallel_jobs), "wall_seconds": 0.0, "cpu_seconds": 0.0,
            "slowed_steps": 0, "steps": 0, "max_load": self._latest_load,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }  # fmt: skip

    def is_slowed(self, wall: float, cpu: float) -> bool:
        """The rule of the module docstring, against the steps seen so far (this one not included)."""
        if wall > SLOWED_RATIO * cpu:
            return True
        if self.segment["threads"] == 1 or len(self._walls) < MEDIAN_MIN_STEPS:
            return False
        if not load_exceeds_run(
            self._latest_load, self.segment["threads"], self.segment["jobs"], self.segment["cores"]
        ):
            return False
        return wall > SLOWED_RATIO * statistics.median(self._walls)

    def step(self, step: int, wall: float, cpu: float) -> bool:
        """Record one timed step that ended at ``step``; return whether it was slowed."""
        slowed = self.is_slowed(wall, cpu)
        self._walls.append(wall)
        segment = self.segment
        if not segment["steps"]:  # a process that only finds the run finished trains no segment
            self.segments.append(segment)
        segment["end_step"] = step
        segment["steps"] += 1
        segment["wall_seconds"] += wall
        segment["cpu_seconds"] += cpu
        segment["slowed_steps"] += int(slowed)
        self._window_cpu += cpu
        self._window_steps += 1
        return slowed

    def log_event(self) -> dict[str, float | None]:
        """Metrics for a train record: mean CPU seconds per step since the last log event, and the load now."""
        self._latest_load = self._load_average()
        if self._latest_load is not None:
            self.segment["max_load"] = max(self.segment["max_load"] or 0.0, self._latest_load)
        record = {
            "train/cpu_seconds": self._window_cpu / self._window_steps if self._window_steps else None,
            "system/load1": self._latest_load,
        }
        self._window_cpu, self._window_steps = 0.0, 0
        return record

    def summary(self) -> dict[str, Any]:
        return {
            "segments": self.segments,
            "machine_shared": machine_shared(self.segments),
            "segments_differ": segments_differ(self.segments),
        }


def segments_differ(segments: list[dict[str, Any]]) -> bool:
    return any(len({repr(s.get(key)) for s in segments}) > 1 for key in _SEGMENT_IDENTITY)


def machine_shared(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict over all segments: ``{"shared", "slowed_fraction", "max_load", "cores", "reasons"}``."""
    steps = sum(s["steps"] for s in segments)
    slowed_fraction = sum(s["slowed_steps"] for s in segments) / steps if steps else 0.0
    reasons = []
    if slowed_fraction > SHARED_SLOWED_FRACTION:
        reasons.append(f"{slowed_fraction:.1%} of steps slowed >{SLOWED_RATIO}x (wall/CPU)")
    for s in segments:
        if load_exceeds_run(s["max_load"], s["threads"], s.get("jobs", 1), s.get("cores") or available_cores()):
            where = f" (steps {s['start_step']}-{s['end_step']})" if len(segments) > 1 else ""
            reasons.append(f"load {s['max_load']:.1f} on {s.get('cores')} cores{where}")
    loads = [s["max_load"] for s in segments if s["max_load"] is not None]
    return {
        "shared": bool(reasons),
        "slowed_fraction": slowed_fraction,
        "max_load": max(loads) if loads else None,
        "cores": max((s.get("cores") or 0 for s in segments), default=available_cores()),
        "reasons": reasons,
    }
