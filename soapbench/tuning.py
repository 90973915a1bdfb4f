"""Tuned, seeded comparisons: each arm's learning rate on a log grid, then the best on several seeds.

The protocol, per arm (a ``configs/variant/`` yaml inside an experiment preset):

1. **Grid.** ``points`` learning rates centred on the arm's yaml lr, a factor ``factor`` (√10, a
   half-decade) apart, each run on the first seed.
2. **Edge.** If the best lr of the grid sits on an edge, one more point beyond that edge is run, once,
   and the tuning log says so; a best still on the edge after that is reported as such.
3. **Seeds.** The best lr then runs on ``seeds - 1`` more seeds (the grid's run is the first).
4. **Siblings.** An arm with ``tune_from`` is not tuned: it takes the tuned lr of its cheaper sibling
   (e.g. SOAP f=1 takes SOAP f=10's) and runs all seeds at it; the tuning log states the reuse.

Runs are separate ``scripts/train.py`` processes, ``jobs`` at a time, one thread each, highest cost
first among the runs that are ready (a run becomes ready when the decision it depends on is made), so
both cores stay busy. The store decides what is already done: a planned run whose resolved config
matches a completed (or diverged) run in ``runs/<experiment>/`` is not started again, and an
interrupted one resumes from its checkpoint, so the same command continues an interrupted
reproduction. The ranking uses the final validation loss on the whole split when the run measured it
(else the fixed set); diverged = +inf.

Ctrl-C or SIGTERM stops the whole reproduction: every running job is sent SIGTERM (the trainer
checkpoints and exits resumably), and :func:`run_design` raises :class:`Interrupted`. A job that finds its
run trained by another process (exit 3: a concurrent reproduction, or a job of a driver killed
outright) is neither failed nor dropped: it waits and is tried again, and the holder's result is read
from the store once it is done.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from soapbench.errors import EXIT_BUSY

FACTOR = math.sqrt(10.0)
# A job whose run another process holds is tried again after this long, then twice as long each time up to
# BUSY_RETRY_MAX_SECONDS (each try starts a train.py that reads the data before it meets the lock).
BUSY_RETRY_SECONDS = 5.0
BUSY_RETRY_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class Arm:
    """One comparison arm: a variant yaml, how expensive it is, and whose lr it borrows (if any)."""

    variant: str
    cost: float = 1.0  # relative run time, for scheduling the longest runs first
    tune_from: str | None = None  # reuse this arm's tuned lr instead of tuning (expensive siblings)


@dataclass(frozen=True)
class Design:
    experiment: str
    arms: tuple[Arm, ...]
    seeds: int = 3
    points: int = 3
    factor: float = FACTOR

    def __post_init__(self) -> None:
        names = [a.variant for a in self.arms]
        for arm in self.arms:
            if arm.tune_from is not None and arm.tune_from not in names:
                raise ValueError(f"arm {arm.variant}: tune_from {arm.tune_from!r} is not an arm of this design")
            if arm.tune_from is not None and self.arm(arm.tune_from).tune_from is not None:
                raise ValueError(f"arm {arm.variant}: tune_from must name a tuned arm, not another borrower")
        if self.points < 2 or self.seeds < 1:
            raise ValueError("a design needs at least 2 grid points and 1 seed")

    def arm(self, variant: str) -> Arm:
        return next(a for a in self.arms if a.variant == variant)


@dataclass(frozen=True)
class Job:
    arm: str
    lr: float
    seed: int
    stage: str  # grid | edge | seed | sibling
    cost: float

    def overrides(self) -> list[str]:
        # sweep_keys: the run directory and W&B name carry the arm and the lr (it is not part of the identity)
        return [f"variant={self.arm}", f"optimizer.lr={self.lr:.6g}", f"seed={self.seed}",
                f"sweep_keys=['variant={self.arm}',optimizer.lr]"]


@dataclass
class ArmLog:
    """What the tuning did for one arm: the report prints it."""

    arm: str
    yaml_lr: float
    grid: list[float] = field(default_factory=list)
    results: dict[str, float | None] = field(default_factory=dict)  # lr (repr) -> final of the first seed
    extended: str | None = None  # "up" / "down": one point added beyond that edge
    best_lr: float | None = None
    still_on_edge: bool = False
    tuned_from: str | None = None
    seeds: list[int] = field(default_factory=list)


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def log_grid(center: float, points: int, factor: float) -> list[float]:
    """``points`` values a ``factor`` apart, centred on ``center`` (one more below for an even count)."""
    low = -(points // 2)
    return [_round(center * factor**k) for k in range(low, low + points)]


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def _best(results: dict[float, float | None]) -> float | None:
    scored = {lr: v for lr, v in results.items() if v is not None}
    if not scored or all(math.isinf(v) for v in scored.values()):
        return None
    return min(scored, key=lambda lr: (scored[lr], lr))


class Planner:
    """Turns finished runs into the next runs, arm by arm, following the protocol above."""

    def __init__(self, design: Design, yaml_lrs: dict[str, float]) -> None:
        self.design = design
        self.logs = {a.variant: ArmLog(a.variant, yaml_lrs[a.variant]) for a in design.arms}
        self.first_seed: dict[str, dict[float, float | None]] = {a.variant: {} for a in design.arms}
        self.pending: dict[str, set[Job]] = {a.variant: set() for a in design.arms}
        self.done_arms: set[str] = set()

    def initial(self) -> list[Job]:
        jobs = []
        for arm in self.design.arms:
            if arm.tune_from is None:
                grid = log_grid(self.logs[arm.variant].yaml_lr, self.design.points, self.design.factor)
                self.logs[arm.variant].grid = list(grid)
                jobs += [self._job(arm, lr, 0, "grid") for lr in grid]
        return jobs

    def _job(self, arm: Arm, lr: float, seed_index: int, stage: str) -> Job:
        job = Job(arm.variant, lr, self.base_seed + seed_index, stage, arm.cost)
        self.pending[arm.variant].add(job)
        return job

    base_seed = 0

    def finished(self, job: Job, final: float | None) -> list[Job]:
        """Record a run's final loss (None: it failed; inf: diverged); return the runs that became ready."""
        self.pending[job.arm].discard(job)
        arm = self.design.arm(job.arm)
        if job.stage in ("grid", "edge"):
            self.first_seed[job.arm][job.lr] = final
            self.logs[job.arm].results[repr(job.lr)] = final
        if self.pending[job.arm]:
            return []
        return self._advance(arm)

    def _advance(self, arm: Arm) -> list[Job]:
        log = self.logs[arm.variant]
        if arm.tune_from is not None or arm.variant in self.done_arms:
            self.done_arms.add(arm.variant)
            return []
        results = self.first_seed[arm.variant]
        best = _best(results)
        tried = sorted(results)
        on_edge = best is not None and best in (tried[0], tried[-1])
        if on_edge and log.extended is None:
            log.extended = "down" if best == tried[0] else "up"
            # one more grid point, from the centre (not from the rounded edge value, so rounding cannot drift)
            k = round(math.log(best / log.yaml_lr) / math.log(self.design.factor)) + (-1 if log.extended == "down" else 1)
            lr = _round(log.yaml_lr * self.design.factor**k)
            log.grid.append(lr)
            return [self._job(arm, lr, 0, "edge")]
        log.best_lr, log.still_on_edge = best, on_edge
        self.done_arms.add(arm.variant)
        if best is None:
            return []  # every lr diverged or failed: nothing to seed, the report shows the grid
        log.seeds = [self.base_seed + i for i in range(self.design.seeds)]
        jobs = [self._job(arm, best, i, "seed") for i in range(1, self.design.seeds)]
        for sibling in (a for a in self.design.arms if a.tune_from == arm.variant):
            sibling_log = self.logs[sibling.variant]
            sibling_log.best_lr, sibling_log.tuned_from = best, arm.variant
            sibling_log.seeds = list(log.seeds)
            jobs += [self._job(sibling, best, i, "sibling") for i in range(self.design.seeds)]
        if not jobs:
            self.done_arms.add(arm.variant)
        return jobs

    def tuning_record(self) -> dict[str, Any]:
        return {
            "experiment": self.design.experiment,
            "protocol": {"points": self.design.points, "factor": round(self.design.factor, 4),
                         "seeds": self.design.seeds, "edge_extension": "one point beyond an edge, once"},
            "arms": {name: asdict(log) for name, log in self.logs.items()},
        }


# --------------------------------------------------------------------------------------------- running


@dataclass
class RunningJob:
    job: Job
    process: subprocess.Popen
    started: float
    log_path: Path
    slot: int


def run_design(
    planner: Planner,
    launch: Callable[[Job, Path, int], subprocess.Popen],
    outcome: Callable[[Job], float | None],
    already_done: Callable[[Job], float | None | bool],
    jobs: int,
    log_dir: Path,
    say: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run the planner's jobs to the end, ``jobs`` at a time; returns counts of what happened.

    ``launch(job, log_path, slot)`` starts a job in one of ``jobs`` slots (a slot can own a GPU).
    ``already_done(job)`` returns False if the job must run, else its final loss (the store has it).
    ``outcome(job)`` reads a finished job's final loss from the store (None: failed).
    """
    ready: list[Job] = list(planner.initial())
    running: list[RunningJob] = []
    waiting: list[tuple[float, Job]] = []  # (when to try again, job): runs another process is training
    busy_tries: dict[Job, int] = {}
    counts = {"ran": 0, "reused": 0, "failed": 0}
    stop: list[int] = []
    checked: set[Job] = set()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while ready or running or waiting:
            if stop:
                for r in running:
                    if r.process.poll() is None:
                        os.killpg(r.process.pid, signal.SIGTERM)
                for r in running:
                    r.process.wait()
                raise Interrupted(stop[0])
            for entry in [w for w in waiting if w[0] <= time.monotonic()]:
                waiting.remove(entry)
                ready.append(entry[1])
                checked.discard(entry[1])  # its holder may have finished it meanwhile
            # reuse what the store already has, so a re-run continues where it stopped
            # until nothing new: a reused run's decision can make runs ready that the store also has
            while unchecked := [j for j in ready if j not in checked]:
                for job in unchecked:
                    checked.add(job)
                    final = already_done(job)
                    if final is not False:
                        ready.remove(job)
                        counts["reused"] += 1
                        ready += planner.finished(job, final)
            ready.sort(key=lambda j: -j.cost)
            while ready and len(running) < jobs:
                job = ready.pop(0)
                log_path = log_dir / f"{job.arm}-lr{job.lr:g}-s{job.seed}.log"
                slot = min(set(range(jobs)) - {r.slot for r in running})
                running.append(RunningJob(job, launch(job, log_path, slot), time.monotonic(), log_path, slot))
                say(f"[start] {job.arm} lr={job.lr:g} seed={job.seed} ({job.stage}); log {log_path}")
            time.sleep(0.2)
            for r in [r for r in running if r.process.poll() is not None]:
                running.remove(r)
                if stop:
                    continue
                if r.process.returncode == EXIT_BUSY:
                    tries = busy_tries[r.job] = busy_tries.get(r.job, 0) + 1
                    waiting.append((time.monotonic() + min(BUSY_RETRY_SECONDS * 2 ** (tries - 1), BUSY_RETRY_MAX_SECONDS), r.job))
                    if tries == 1:
                        say(f"[busy ] {r.job.arm} lr={r.job.lr:g} seed={r.job.seed}: another process trains it; "
                            "waiting for it, then reading its result")
                    continue
                final = outcome(r.job)
                counts["ran"] += 1
                if final is None:
                    counts["failed"] += 1
                minutes = (time.monotonic() - r.started) / 60
                shown = "failed (see its log)" if final is None else f"final {final:.5g}"
                say(f"[done ] {r.job.arm} lr={r.job.lr:g} seed={r.job.seed}: {shown} in {minutes:.1f} min")
                ready += planner.finished(r.job, final)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return counts


def write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def train_command(repo: Path, experiment: str, results_dir: str, job: Job, extra: Sequence[str],
                  thread_overrides: Iterable[str]) -> list[str]:
    return [sys.executable, str(repo / "scripts" / "train.py"), f"experiment={experiment}",
            f"paths.results_dir={results_dir}", *job.overrides(), *thread_overrides, *extra]
