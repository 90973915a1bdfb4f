"""Tuned, seeded comparisons: each arm's learning rate on a log grid, then the best on other seeds.

The protocol, the same for every arm of a design (a ``configs/variant/`` yaml inside an experiment preset):

1. **Tuning seeds.** Tuning runs use their own seeds, the ``tune_seeds`` first from the preset's ``seed``
   (by default one: seed 0); reported means use the next ``seeds`` (1 … ``seeds``) only, so the noise that
   picked an lr is never averaged into the number reported for it.
2. **Grid.** ``points`` learning rates centred on the arm's yaml lr (or on a centre the design names for
   every arm, e.g. each arm's tuned lr from an earlier run of the same reproduction), a factor ``factor`` (√10, a
   half-decade) apart, each on every tuning seed; an lr's score is its mean final loss over them.
3. **Bracketing.** While the best lr sits on an edge of what was tried, one more point a ``factor`` beyond
   that edge is run, up to ``max_extensions`` times (3). A best still on an edge at the cap is flagged
   (``still_on_edge``): the optimum may lie outside, and the report says so beside the arm's verdict.
4. **Report seeds.** The best lr runs on the ``seeds`` report seeds. A design with ``budgets`` (fractions of
   the preset's ``trainer.max_steps``, the SOAP paper's shortened-schedule efficiency protocol) runs it on
   them at every budget, each a whole schedule compressed to that many steps; tuning runs use the full budget.
5. **Borrowers.** An arm with ``tune_from`` is not tuned: it takes the tuned lr of its cheaper sibling
   (e.g. SOAP f=1 takes SOAP f=10's) and runs the report seeds at it; ``tuning: "borrowed"`` says so.
6. **One weight decay per step.** Decoupled weight decay shrinks the weights by lr × wd per step, so one
   wd coefficient at two tuned lrs is two treatments. A design with ``decay_per_step`` D gives every run
   ``weight_decay = D / lr``: every arm, at every grid point, decays by D per step at the peak lr (and by
   the same schedule after it), the weights' averaging timescale 1/D steps.

Every arm thus gets the same grid size, the same tuning seeds and the same extension rule; what an arm
does not compare (weight decay, companion, schedule) is checked equal across arms before anything runs
(:func:`parity_differences`).

``tuning.json`` (written by ``scripts/reproduce.py`` into ``runs/<experiment>/``), read by the report::

    {"experiment": str,
     "protocol": {"points", "factor", "tune_seeds": [int], "report_seeds": [int], "seeds": n_report,
                  "max_extensions", "edge_extension": str, "decay_per_step": float | null, "grid_centre": str,
                  "budgets": [fraction], "full_steps": int | null},
     "arms": {variant: {"yaml_lr" (the grid's centre), "grid": [lr, …] (in the order run), "results": {repr(lr): mean over
              the tuning seeds | null (failed) | Infinity (diverged)}, "results_by_seed": {repr(lr):
              {seed: final}}, "extensions": int, "extended": "up" | "down" | null (the last one),
              "best_lr", "still_on_edge": bool, "tuning": "grid" | "borrowed", "tuned_from": variant | null,
              "tune_seeds": [int], "seeds": [report seeds], "flags": [str]}},
     "runs": [{"arm", "lr", "seed", "stage": grid | edge | seed | sibling, "role": tune | report,
               "max_steps" (a shortened budget only)}]}

A run's identity for the report is (arm = variant, lr as written by ``%.6g``, seed); its ``role`` is
``tune`` (grid and edge runs) or ``report`` (seed and sibling runs).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from soapbench.errors import EXIT_BUSY

FACTOR = math.sqrt(10.0)
MAX_EXTENSIONS = 3
# A job whose run another process holds is tried again after this long, then twice as long each time up to
# BUSY_RETRY_MAX_SECONDS (each try starts a train.py that reads the data before it meets the lock).
BUSY_RETRY_SECONDS = 5.0
BUSY_RETRY_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class Arm:
    """One comparison arm: a variant yaml, how expensive it is, and whose lr it borrows (if any)."""

    variant: str
    cost: float = 1.0  # run time relative to the design's cheapest arm, for scheduling and estimates
    tune_from: str | None = None  # reuse this arm's tuned lr instead of tuning (expensive siblings)


@dataclass(frozen=True)
class Design:
    experiment: str
    arms: tuple[Arm, ...]
    seeds: int = 3  # report seeds per arm
    points: int = 3
    factor: float = FACTOR
    tune_seeds: int = 1
    max_extensions: int = MAX_EXTENSIONS
    decay_per_step: float | None = None  # lr x weight_decay of every run (None: the preset's weight decay)
    # Where every arm's grid is centred, in words (the same rule for every arm; tuning.json and the report say it)
    grid_centre: str = "its yaml lr"
    # Fractions of the full budget at which the best lr runs on the report seeds (1.0 among them); tuning runs
    # use the full budget, full_steps (the preset's trainer.max_steps, needed once a fraction is below 1)
    budgets: tuple[float, ...] = (1.0,)
    full_steps: int | None = None

    def __post_init__(self) -> None:
        names = [a.variant for a in self.arms]
        for arm in self.arms:
            if arm.tune_from is not None and arm.tune_from not in names:
                raise ValueError(f"arm {arm.variant}: tune_from {arm.tune_from!r} is not an arm of this design")
            if arm.tune_from is not None and self.arm(arm.tune_from).tune_from is not None:
                raise ValueError(f"arm {arm.variant}: tune_from must name a tuned arm, not another borrower")
        if self.decay_per_step is not None and not 0 <= self.decay_per_step < 1:
            raise ValueError(f"decay_per_step must be in [0, 1), got {self.decay_per_step}")
        if (
            1.0 not in self.budgets
            or not all(0 < b <= 1 for b in self.budgets)
            or len(set(self.budgets)) < len(self.budgets)
        ):
            raise ValueError(f"budgets must be distinct fractions in (0, 1] including 1.0, got {self.budgets}")
        if len(self.budgets) > 1 and not (isinstance(self.full_steps, int) and self.full_steps > 0):
            raise ValueError(
                "a design with shortened budgets needs the preset's trainer.max_steps (full_steps), "
                f"got {self.full_steps!r}"
            )
        for fraction in self.budgets:
            if self.steps_at(fraction) == 0:
                raise ValueError(f"budget {fraction} of {self.full_steps} steps rounds to 0 steps")
        if self.points < 2 or self.seeds < 1 or self.tune_seeds < 1 or self.max_extensions < 0:
            raise ValueError(
                "a design needs at least 2 grid points, 1 tuning seed, 1 report seed and a non-negative extension cap"
            )

    def arm(self, variant: str) -> Arm:
        return next(a for a in self.arms if a.variant == variant)

    def tune_seed_list(self, base: int) -> list[int]:
        return [base + i for i in range(self.tune_seeds)]

    def report_seed_list(self, base: int) -> list[int]:
        """The seeds reported means use: after the tuning seeds, so the two never share one."""
        return [base + self.tune_seeds + i for i in range(self.seeds)]

    def steps_at(self, fraction: float) -> int | None:
        """The run's trainer.max_steps at a budget fraction; None at the full budget (the preset's own)."""
        return None if fraction == 1.0 else round(self.full_steps * fraction)

    def weight_decay_at(self, lr: float) -> float | None:
        """The weight decay a run at ``lr`` gets (None: the preset's), so that lr x wd is the design's D."""
        return None if self.decay_per_step is None else self.decay_per_step / lr


TUNE_STAGES = ("grid", "edge")


@dataclass(frozen=True)
class Job:
    arm: str
    lr: float
    seed: int
    stage: str  # grid | edge (role tune) | seed | sibling (role report)
    cost: float
    weight_decay: float | None = None  # set by a design with one decay per step; None: the preset's
    max_steps: int | None = None  # a shortened budget; None: the preset's full one

    @property
    def label(self) -> str:
        """How the driver names the run in its output: arm, lr, seed and a shortened budget."""
        steps = "" if self.max_steps is None else f" steps={self.max_steps}"
        return f"{self.arm} lr={self.lr:g} seed={self.seed}{steps}"

    @property
    def role(self) -> str:
        return "tune" if self.stage in TUNE_STAGES else "report"

    def overrides(self) -> list[str]:
        # sweep_keys: the run directory and W&B name carry the arm and the lr (it is not part of the identity).
        # A tuning run is not reported: its checkpoints go when it completes (most of a reproduction's disk).
        keep = [] if self.role == "report" else ["trainer.keep_final_checkpoint=false"]
        decay = [] if self.weight_decay is None else [f"optimizer.weight_decay={self.weight_decay:.6g}"]
        named = "" if self.max_steps is None else ",trainer.max_steps"
        return [
            f"variant={self.arm}",
            f"optimizer.lr={self.lr:.6g}",
            *decay,
            f"seed={self.seed}",
            f"sweep_keys=['variant={self.arm}',optimizer.lr{named}]",
            *keep,
        ]

    def with_extra(self, extra: Sequence[str]) -> list[str]:
        """The job's overrides with the user's (after ``--``), then a shortened budget last: a user's
        ``trainer.max_steps`` sets the full budget, and must not undo a shortened run's own."""
        budget = [] if self.max_steps is None else [f"trainer.max_steps={self.max_steps}"]
        return [*self.overrides(), *extra, *budget]


@dataclass
class ArmLog:
    """What the tuning did for one arm: the report prints it (the fields are tuning.json's, see above)."""

    arm: str
    yaml_lr: float
    grid: list[float] = field(default_factory=list)
    results: dict[str, float | None] = field(default_factory=dict)  # lr (repr) -> mean over the tuning seeds
    results_by_seed: dict[str, dict[int, float | None]] = field(default_factory=dict)
    extensions: int = 0
    extended: str | None = None  # direction of the last extension: "up" / "down"
    best_lr: float | None = None
    still_on_edge: bool = False
    tuning: str = "grid"  # grid: tuned on its own grid; borrowed: takes tuned_from's lr
    tuned_from: str | None = None
    tune_seeds: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # report seeds
    flags: list[str] = field(default_factory=list)


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


def _score(by_seed: dict[int, float | None], seeds: Sequence[int]) -> float | None:
    """An lr's tuning score: the mean over every tuning seed; None when one failed (it cannot be ranked)."""
    values = [by_seed.get(s) for s in seeds]
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _best(results: dict[float, float | None]) -> float | None:
    scored = {lr: v for lr, v in results.items() if v is not None}
    if not scored or all(math.isinf(v) for v in scored.values()):
        return None
    return min(scored, key=lambda lr: (scored[lr], lr))


class Planner:
    """Turns finished runs into the next runs, arm by arm, following the protocol above."""

    def __init__(self, design: Design, yaml_lrs: dict[str, float], base_seed: int = 0) -> None:
        self.design = design
        self.base_seed = base_seed
        self.tune_seeds = design.tune_seed_list(base_seed)
        self.report_seeds = design.report_seed_list(base_seed)
        self.logs = {a.variant: ArmLog(a.variant, yaml_lrs[a.variant]) for a in design.arms}
        self.pending: dict[str, set[Job]] = {a.variant: set() for a in design.arms}
        self.done_arms: set[str] = set()
        self.planned: list[Job] = []

    def initial(self) -> list[Job]:
        jobs = []
        for arm in self.design.arms:
            log = self.logs[arm.variant]
            if arm.tune_from is None:
                log.grid = log_grid(log.yaml_lr, self.design.points, self.design.factor)
                log.tune_seeds = list(self.tune_seeds)
                jobs += [self._job(arm, lr, seed, "grid") for lr in log.grid for seed in self.tune_seeds]
            else:
                log.tuning, log.tuned_from = "borrowed", arm.tune_from
                log.flags.append(f"not tuned: takes {arm.tune_from}'s tuned lr")
        return jobs

    def _job(self, arm: Arm, lr: float, seed: int, stage: str, budget: float = 1.0) -> Job:
        design = self.design
        job = Job(arm.variant, lr, seed, stage, arm.cost * budget, design.weight_decay_at(lr), design.steps_at(budget))
        self.pending[arm.variant].add(job)
        self.planned.append(job)
        return job

    def finished(self, job: Job, final: float | None) -> list[Job]:
        """Record a run's final loss (None: it failed; inf: diverged); return the runs that became ready."""
        self.pending[job.arm].discard(job)
        if job.role == "tune":
            log = self.logs[job.arm]
            by_seed = log.results_by_seed.setdefault(repr(job.lr), {})
            by_seed[job.seed] = final
            if all(s in by_seed for s in self.tune_seeds):
                log.results[repr(job.lr)] = _score(by_seed, self.tune_seeds)
        if self.pending[job.arm]:
            return []
        return self._advance(self.design.arm(job.arm))

    def _advance(self, arm: Arm) -> list[Job]:
        log = self.logs[arm.variant]
        if arm.tune_from is not None or arm.variant in self.done_arms:
            self.done_arms.add(arm.variant)
            return []
        results = {float(lr): v for lr, v in log.results.items()}
        best = _best(results)
        tried = sorted(results)
        on_edge = best is not None and best in (tried[0], tried[-1])
        if on_edge and log.extensions < self.design.max_extensions:
            log.extensions += 1
            log.extended = "down" if best == tried[0] else "up"
            # one more point on the grid, from the centre (not from the rounded edge value, so rounding cannot drift)
            k = round(math.log(best / log.yaml_lr) / math.log(self.design.factor)) + (
                -1 if log.extended == "down" else 1
            )
            lr = _round(log.yaml_lr * self.design.factor**k)
            log.grid.append(lr)
            return [self._job(arm, lr, seed, "edge") for seed in self.tune_seeds]
        log.best_lr, log.still_on_edge = best, on_edge
        if on_edge:
            log.flags.append(
                f"best lr on the {'lower' if best == tried[0] else 'upper'} edge after "
                f"{log.extensions} extensions (the cap): the optimum may lie outside the grid"
            )
        self.done_arms.add(arm.variant)
        if best is None:
            log.flags.append("no usable lr: every grid point diverged or failed")
            return []  # nothing to seed, the report shows the grid
        log.seeds = list(self.report_seeds)
        budgets = sorted(self.design.budgets, reverse=True)
        jobs = [self._job(arm, best, seed, "seed", b) for b in budgets for seed in self.report_seeds]
        for sibling in (a for a in self.design.arms if a.tune_from == arm.variant):
            sibling_log = self.logs[sibling.variant]
            sibling_log.best_lr, sibling_log.seeds = best, list(self.report_seeds)
            jobs += [self._job(sibling, best, seed, "sibling", b) for b in budgets for seed in self.report_seeds]
        return jobs

    def tuning_record(self) -> dict[str, Any]:
        d = self.design
        return {
            "experiment": d.experiment,
            "protocol": {
                "points": d.points,
                "factor": round(d.factor, 4),
                "seeds": d.seeds,
                "tune_seeds": list(self.tune_seeds),
                "report_seeds": list(self.report_seeds),
                "max_extensions": d.max_extensions,
                "decay_per_step": d.decay_per_step,
                "grid_centre": d.grid_centre,
                "budgets": list(d.budgets),
                "full_steps": d.full_steps,
                "edge_extension": f"one point beyond the edge, until interior or {d.max_extensions} extensions",
            },
            "arms": {name: asdict(log) for name, log in self.logs.items()},
            "runs": [
                {"arm": j.arm, "lr": float(f"{j.lr:.6g}"), "seed": j.seed, "stage": j.stage, "role": j.role}
                | ({} if j.max_steps is None else {"max_steps": j.max_steps})
                for j in self.planned
            ],
        }


# What an arm may change in its optimizer section without being a confound: its own knobs. The rest of the
# section (weight decay, which roles it trains, the companion of the other roles) is one treatment for all arms.
_COMPANION_SHARED = ("lr", "weight_decay")  # a companion that omits these inherits the arm's (registry)


def _treatment(variant: str, config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a resolved run config that are not the compared optimizer's own, as comparable values."""
    from soapbench.optimizers.param_groups import ALL_ROLES
    from soapbench.optimizers.registry import resolve_spec

    optimizer = dict(config.get("optimizer") or {})
    treatment = {key: value for key, value in config.items() if key not in ("optimizer", "variant", "hydra")}
    roles = optimizer.get("main_roles")
    roles = frozenset(resolve_spec(optimizer["name"], None).main_roles if roles is None else roles)
    treatment["optimizer.main_roles"] = sorted(roles)
    treatment["optimizer.weight_decay per step (lr × wd)"] = _decay_per_step(
        optimizer.get("lr"), optimizer.get("weight_decay", 0.0)
    )
    if not roles >= set(ALL_ROLES):
        companion = dict(optimizer.get("companion") or {})
        companion.setdefault("name", resolve_spec(optimizer["name"], None).companion)
        for key in _COMPANION_SHARED:
            # inherited from the arm: the lr moves with each arm's tuning, so it is never one treatment
            companion.setdefault(key, f"{variant}'s optimizer.{key}" if key == "lr" else optimizer.get(key))
        treatment.update({f"optimizer.companion.{key}": value for key, value in companion.items()})
    return treatment


def _decay_per_step(lr: Any, weight_decay: Any) -> float | None:
    """lr × wd to 4 significant digits (a wd written as D / lr with ``%.6g`` gives D back), None if unset."""
    if lr is None or weight_decay is None:
        return None
    return float(f"{float(lr) * float(weight_decay):.4g}")


def parity_differences(configs: dict[str, dict[str, Any]]) -> list[str]:
    """Every setting outside the compared optimizer's own knobs that is not the same in every arm.

    ``configs`` maps each arm to its resolved run config (plain containers). Compared: everything outside
    the ``optimizer`` section (model, data, trainer with its schedule, warmup and weight-decay roles, seed),
    the weight decay per step, lr × wd (one per step for every arm: one wd coefficient at two lrs is two
    treatments), the roles it trains, and the companion that trains the others (name, lr, betas, eps, wd). One line per differing setting, naming each arm's value.
    """
    from soapbench.report.store import flatten

    treatments = {variant: flatten(_treatment(variant, config)) for variant, config in configs.items()}
    keys = sorted({key for t in treatments.values() for key in t})
    missing = object()
    lines = []
    for key in keys:
        values = {variant: t.get(key, missing) for variant, t in treatments.items()}
        if len({repr(v) for v in values.values()}) > 1:
            shown = ", ".join(f"{variant}={'(unset)' if v is missing else v}" for variant, v in values.items())
            lines.append(f"{key}: {shown}")
    return lines


def simulate(
    planner: Planner, final_of: Callable[[Job], float | None], seconds_of: Callable[[Job], float], jobs: int
) -> tuple[int, float, float]:
    """(runs, wall seconds, run seconds summed) of a design run ``jobs`` at a time as :func:`run_design`
    schedules it (highest cost first among the ready runs), without training anything.

    ``final_of`` stands in for each run's outcome (it decides the extensions), ``seconds_of`` for its duration.
    """
    ready, running, now, count, busy = list(planner.initial()), [], 0.0, 0, 0.0
    while ready or running:
        ready.sort(key=lambda j: -j.cost)
        while ready and len(running) < jobs:
            job = ready.pop(0)
            running.append((now + seconds_of(job), job))
            busy += seconds_of(job)
        running.sort(key=lambda r: r[0])
        now, job = running.pop(0)
        count += 1
        ready += planner.finished(job, final_of(job))
    return count, now, busy


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
    planned: int | None = None,
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
    started = time.monotonic()
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
                budget = "" if job.max_steps is None else f"-n{job.max_steps}"
                log_path = log_dir / f"{job.arm}-lr{job.lr:g}-s{job.seed}{budget}.log"
                slot = min(set(range(jobs)) - {r.slot for r in running})
                running.append(RunningJob(job, launch(job, log_path, slot), time.monotonic(), log_path, slot))
                say(f"[start] {job.label} ({job.stage}); log {log_path}")
            time.sleep(0.2)
            for r in [r for r in running if r.process.poll() is not None]:
                running.remove(r)
                if stop:
                    continue
                if r.process.returncode == EXIT_BUSY:
                    tries = busy_tries[r.job] = busy_tries.get(r.job, 0) + 1
                    waiting.append(
                        (time.monotonic() + min(BUSY_RETRY_SECONDS * 2 ** (tries - 1), BUSY_RETRY_MAX_SECONDS), r.job)
                    )
                    if tries == 1:
                        say(
                            f"[busy ] {r.job.label}: another process trains it; waiting for it, then reading its result"
                        )
                    continue
                final = outcome(r.job)
                counts["ran"] += 1
                if final is None:
                    counts["failed"] += 1
                minutes = (time.monotonic() - r.started) / 60
                shown = "failed (see its log)" if final is None else f"final {final:.5g}"
                ready += planner.finished(r.job, final)
                progress = _progress(counts, planned, len(ready) + len(running) + len(waiting), started, jobs)
                say(f"[done ] {r.job.label}: {shown} in {minutes:.1f} min; {progress}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return counts


def _progress(counts: dict[str, int], planned: int | None, left: int, started: float, jobs: int) -> str:
    """'run k of N, ETA 0:12 (from the runs finished so far)': N is the plan's count with no extension, raised to
    what is known to be left when extensions add runs; reused runs count as done but not toward the pace."""
    done = counts["ran"] + counts["reused"]
    total = max(planned or 0, done + left)
    elapsed = time.monotonic() - started
    if counts["ran"] == 0:
        return f"run {done} of {total}"
    remaining = max(total - done, 0)
    # the pace of the runs trained here: with jobs at a time, wall time per run is elapsed / ran
    eta = int(elapsed / counts["ran"] * remaining)
    return f"run {done} of {total}, ETA {eta // 3600}:{eta % 3600 // 60:02d} h:min (from the runs finished so far)"


def write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def train_command(
    repo: Path, experiment: str, results_dir: str, job: Job, extra: Sequence[str], thread_overrides: Iterable[str]
) -> list[str]:
    return [
        sys.executable,
        str(repo / "scripts" / "train.py"),
        f"experiment={experiment}",
        f"paths.results_dir={results_dir}",
        *thread_overrides,
        *job.with_extra(extra),
    ]
