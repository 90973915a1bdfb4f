"""Reproduce a paper comparison with one command: tune and seed every arm, then report ours beside the paper's.

    python scripts/reproduce.py whitening_nanogpt --scale cpu               # the main job (AdamW vs SOAP at f=10)
    python scripts/reproduce.py whitening_nanogpt --scale cpu --all-arms    # all five arms of (a), f=1 included
    python scripts/reproduce.py whitening_nanogpt --scale paper --jobs 8    # 8 GPUs: one run on each
    python scripts/reproduce.py whitening_nanogpt --scale paper --dry-run   # the plan, its run count and GPU hours

Each reproduction is an experiment preset per scale (``configs/experiment/``), a design of arms
(``configs/variant/`` yamls) and a reference file of paper numbers (``results/reference/``). Every arm's
learning rate is tuned on a log grid around its yaml value on tuning seeds, extended while its best is on
an edge, and the best runs on other seeds, the ones reported (:mod:`soapbench.tuning`); at CPU scale
expensive siblings (f = 1) reuse their cheap sibling's tuned lr, and tuning.json says so per arm. Before
anything runs, every arm's config is composed and checked to differ from the others only in the compared
optimizer's own knobs (weight decay, companion and its roles, schedule equal); the plan, its run count
and a time estimate are printed (``--dry-run`` stops there, writing nothing). Runs go ``--jobs`` at a
time with one thread each. Re-running is safe: finished runs are reused, interrupted ones resume.
Ctrl-C or SIGTERM checkpoints the running jobs and stops the whole reproduction (exit 130/143); the same
command continues it. Everything after ``--`` is passed to every run (extra overrides), except what the
protocol sets (lr, seed, variant).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from soapbench.outputs import output_dir_error
from soapbench.tuning import (
    MAX_EXTENSIONS,
    Arm,
    Design,
    Interrupted,
    Job,
    Planner,
    parity_differences,
    run_design,
    simulate,
    train_command,
    write_json_atomic,
)

REPO = Path(__file__).resolve().parents[1]  # the checkout: scripts/train.py and scripts/report.py run each job

SCALES = ("cpu", "paper")


@dataclass(frozen=True)
class Reproduction:
    description: str
    experiments: dict[str, str]  # scale -> experiment preset
    reference: str
    # Seconds one run of cost 1.0 takes at each scale, for the estimate printed before anything runs:
    # at "cpu" from runs measured two at a time on 2 cores (start-up and final evaluation included), at
    # "paper" on one H100 (rough, scaled from the paper's setup). An estimate, never a measurement.
    unit_seconds: dict[str, float]
    # The optimizer whose best final loss is the target for steps/time-to-target and efficiency ratios.
    baseline: str = "adamw"
    arms: tuple[Arm, ...] = ()
    seeds: int = 3  # report seeds per arm
    tune_seeds: int = 1
    points: int = 3  # lr grid points before any edge extension
    max_extensions: int = MAX_EXTENSIONS  # edge extensions per arm before its best is flagged as on the edge
    cpu_arms: tuple[str, ...] = ()  # the CPU-scale default subset when all arms do not fit its budget (--all-arms: all)
    # At CPU scale, each arm's grid centred here instead of on its yaml lr (the same rule for every arm, stated in
    # cpu_centre_source): an earlier run's tuned lr saves the extension that run needed, and the budget with it
    cpu_grid_centres: dict[str, float] = field(default_factory=dict)
    cpu_centre_source: str = ""
    # Where unit_seconds["cpu"] was measured, printed under the estimate
    cpu_unit_source: str = (
        "per-run times of earlier runs on an Intel Xeon with AVX-512; an AMD EPYC with AVX2 took ~2.5x as long per "
        "step for (a)"
    )
    # lr x weight_decay for every run of every arm (soapbench.tuning, rule 6), from the workload's own recipe;
    # None where no arm decays (wd 0 in the preset)
    decay_per_step: float | None = None
    # Per scale, the budget fractions the best lr runs at on the report seeds (the preset's trainer.max_steps = 1.0;
    # the SOAP paper's shortened-schedule efficiency protocol); absent: the full budget only
    budgets: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def arms_for(self, scale: str, all_arms: bool = False) -> tuple[Arm, ...]:
        """At CPU scale expensive siblings borrow a tuned lr (and a subset may be the default); at paper scale every arm is tuned."""
        if scale != "cpu":
            return tuple(replace(a, tune_from=None) for a in self.arms)
        if self.cpu_arms and not all_arms:
            return tuple(a for a in self.arms if a.variant in self.cpu_arms)
        return self.arms


REPRODUCTIONS = {
    "whitening_nanogpt": Reproduction(
        "(a) gradient-whitening paper: AdamW vs Shampoo vs SOAP at precondition frequency 1 and 10, nanoGPT char",
        {"cpu": "whitening_nanogpt_cpu", "paper": "whitening_nanogpt"},
        "whitening_nanogpt",
        # cpu: the 39 runs of results/reproductions/whitening_nanogpt_cpu on an AMD EPYC (AVX2), two at a time: AdamW
        # trained 1000 steps in 90 s on average, Shampoo f=10 in 167 s, SOAP f=10 in 159 s, and the job's wall time
        # (55.5 min) less the training time leaves ~32 s per run (start-up, evaluations, checkpoints, idle slots).
        # The f=1 costs keep their ratio to AdamW from the Intel Xeon runs (not measured on the AMD).
        {"cpu": 122.0, "paper": 200.0},
        arms=(
            Arm("adamw", 1.0),
            Arm("shampoo_f10", 1.63),
            Arm("soap_f10", 1.57),
            Arm("shampoo_f1", 4.1, tune_from="shampoo_f10"),
            Arm("soap_f1", 3.1, tune_from="soap_f10"),
        ),
        seeds=5,
        tune_seeds=2,
        decay_per_step=1e-4,  # nanoGPT's shakespeare_char recipe: AdamW lr 1e-3 with wd 0.1
        # AdamW, Shampoo and SOAP at 5 report seeds took 55.5 min on the AMD EPYC: over the main job's 35 minutes. The
        # main job is the paper's headline pair, AdamW vs SOAP f=10; --all-arms adds Shampoo and the f=1 arms.
        cpu_arms=("adamw", "soap_f10"),
        cpu_grid_centres={"adamw": 3.16e-3, "shampoo_f10": 9.49e-3, "soap_f10": 9.49e-3},
        cpu_centre_source=(
            "each arm's tuned lr from the previous CPU run of (a) (commit 73f54ff, tuning seeds 0-1; wd 0.1 for every "
            "arm, before one decay per step)"
        ),
        cpu_unit_source=(
            "the 39 runs of the previous CPU run of (a) on a 2-core AMD EPYC with AVX2 (an Intel Xeon with AVX-512 took "
            "~0.4x as long per step)"
        ),
    ),
    "whitening_colorization": Reproduction(
        "(b) gradient-whitening paper: Adam vs Shampoo vs SOAP (frequency 1 and 10) on image colorization",
        {"cpu": "whitening_colorization_cpu", "paper": "whitening_colorization"},
        "whitening_colorization",
        # cpu: from results/reproductions/whitening_colorization_cpu (AdamW 31 s per run, two at a time, + 15 s)
        {"cpu": 46.0, "paper": 400.0},
        arms=(
            Arm("adamw", 1.0),
            Arm("shampoo_f10", 1.15),
            Arm("soap_f10", 1.1),
            Arm("shampoo_f1", 1.3),
            Arm("soap_f1", 1.25),
        ),  # f=1 is cheap here: tuned on its own grid
    ),
    "soap_lm": Reproduction(
        "(c) SOAP paper: AdamW vs Shampoo vs SOAP on 360m/660m LMs (lr sweep, efficiency fit over shortened schedules)",
        {"cpu": "soap_lm_cpu", "paper": "soap_lm_360m"},
        "soap_lm",
        # cpu: the 40 runs of results/reproductions/soap_lm_cpu on an AMD EPYC (AVX2), two at a time: a 200-step run
        # took 4.8-5.5 min for AdamW, 5.1-5.6 for Shampoo f=10 and 5.0-5.6 for SOAP f=10, start-up and the final
        # evaluation (256 batches, a fixed cost that shortened schedules keep) included; 91 min in all.
        # paper: ~4 H100-hours per run.
        {"cpu": 330.0, "paper": 14400.0},
        arms=(Arm("adamw", 1.0), Arm("shampoo_f10", 1.05), Arm("soap_f10", 1.04)),
        # every arm's best lr at each shortened schedule on the report seeds: the paper's efficiency protocol
        budgets={"cpu": (0.5, 0.75, 1.0), "paper": (0.5, 0.625, 0.75, 0.875, 1.0)},
        cpu_unit_source="the 40 runs of results/reproductions/soap_lm_cpu on a 2-core AMD EPYC with AVX2",
    ),
    "soap_muon": Reproduction(
        "(d) SOAP-Muon report: Muon (10 Newton-Schulz steps, as the report's baseline) vs SOAP-Muon at precondition frequency 1 and 40",
        {"cpu": "soap_muon_cpu", "paper": "soap_muon_124m"},
        "soap_muon",
        # cpu: the 19 runs of results/reproductions/soap_muon_cpu on an AMD EPYC (AVX2), two at a time: a Muon run
        # (10 Newton-Schulz steps, float32 GEMMs) took 4.4-4.6 min, SOAP-Muon f=40 5.0-5.4 and f=1 5.4-5.7, start-up
        # and evaluations included. paper: ~2 H100-hours per run.
        {"cpu": 270.0, "paper": 7200.0},
        baseline="muon",
        # f=1 tuned on its own grid
        arms=(Arm("muon_ns10", 1.0), Arm("soap_muon_f40", 1.16), Arm("soap_muon_f1", 1.23)),
        cpu_grid_centres={"muon_ns10": 0.02, "soap_muon_f40": 6.32e-3, "soap_muon_f1": 6.32e-3},
        cpu_centre_source=(
            "each arm's lr from the previous CPU run of (d) (commit 1943d59, tuning seed 0): Muon's tuned 0.02 (then at "
            "5 Newton-Schulz steps), SOAP-Muon f=40's tuned 6.32e-3, and f=1 the lr it borrowed from f=40 (not tuned then)"
        ),
        cpu_unit_source="the 19 runs of results/reproductions/soap_muon_cpu on a 2-core AMD EPYC with AVX2",
    ),
    "kl_methods": Reproduction(
        "(e) KL paper: KL-Shampoo and KL-SOAP vs Shampoo and SOAP",
        {"cpu": "kl_methods_cpu", "paper": "kl_methods_124m"},
        "kl_methods",
        # cpu: the 24 runs of results/reproductions/kl_methods_cpu on an AMD EPYC (AVX2), two at a time: 3.6-4.6 min
        # per run for every arm, start-up and evaluations included (52 min in all). paper: ~2.8 H100-hours per run.
        {"cpu": 235.0, "paper": 10000.0},
        baseline="shampoo",
        arms=(Arm("shampoo_f10", 1.0), Arm("soap_f10", 0.96), Arm("kl_shampoo_f10", 1.08), Arm("kl_soap_f10", 1.07)),
        decay_per_step=3e-5,  # the KL and SOAP references' wd 0.01 at their default lr 3e-3
        cpu_grid_centres={
            "shampoo_f10": 9.49e-3,
            "soap_f10": 9.49e-3,
            "kl_shampoo_f10": 9.49e-3,
            "kl_soap_f10": 9.49e-3,
        },
        cpu_centre_source=(
            "each arm's tuned lr from the previous CPU run of (e) (commit 10a7d49, tuning seed 0; wd 0.01 for every arm, "
            "before one decay per step): all four were best at 9.49e-3, each on its grid's upper edge, then interior"
        ),
        cpu_unit_source="the 24 runs of results/reproductions/kl_methods_cpu on a 2-core AMD EPYC with AVX2",
    ),
}


class BadInput(Exception):
    """An override or config the runs would reject: one line, exit 2, before anything runs or is written."""


def _compose(experiment: str, overrides: list[str]) -> dict:
    """The resolved, validated config a ``train.py experiment=<experiment> <overrides>`` run would train."""
    from soapbench.composition import compose_run_config
    from soapbench.errors import ConfigError

    try:
        config = compose_run_config([f"experiment={experiment}", *overrides])
    except ConfigError as error:
        raise BadInput(str(error)) from error
    lr = config.get("optimizer", {}).get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise BadInput(f"optimizer.lr: expected a positive number, got {lr!r}")
    return config


class Store:
    """Finds a planned run in the results store by its identity, as train.py and the search driver do
    (:func:`soapbench.composition.locate_planned_run`): the same config on the same data is the same run."""

    def __init__(self, results_dir: Path, experiment: str, extra: list[str]) -> None:
        self.results_dir, self.experiment, self.extra = results_dir, experiment, extra
        self.run_dirs: dict[Job, Path] = {}

    def run_dir(self, job: Job) -> Path:
        from soapbench.composition import locate_planned_run
        from soapbench.errors import ConfigError

        if job not in self.run_dirs:
            overrides = [f"experiment={self.experiment}", f"paths.results_dir={self.results_dir}",
                         *job.with_extra(self.extra)]  # fmt: skip
            try:
                self.run_dirs[job] = locate_planned_run(overrides).run_dir
            except ConfigError as error:
                raise BadInput(str(error)) from error
        return self.run_dirs[job]

    def find(self, job: Job):
        from soapbench.report.store import load_run_dir

        run_dir = self.run_dir(job)
        return load_run_dir(run_dir, self.experiment) if (run_dir / "config.yaml").exists() else None

    def final(self, job: Job) -> float | None | bool:
        """False: not finished (run it); inf: diverged; None: failed; else the final validation loss."""
        run = self.find(job)
        if run is None or run.status not in ("completed", "diverged", "failed"):
            return False
        if run.status == "diverged":
            return float("inf")
        if run.status == "failed":
            return None
        summary = run.summary or {}
        value = summary.get("final_full_val_loss", summary.get("final_val_loss"))
        return float(value) if value is not None else float("inf")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _thread_overrides(jobs: int) -> list[str]:
    """One thread per job (small eigh calls slow down by orders of magnitude when BLAS threads compete)."""
    trainer_yaml = (REPO / "configs" / "trainer" / "default.yaml").read_text()
    overrides = []
    if "\nthreads:" in "\n" + trainer_yaml:
        overrides.append("trainer.threads=1")
    if "\nparallel_jobs:" in "\n" + trainer_yaml:
        overrides.append(f"trainer.parallel_jobs={jobs}")
    return overrides


# What the protocol itself sets per run: an extra override of these would silently undo the tuning or the seeds.
_PROTOCOL_KEYS = ("optimizer.lr", "seed", "variant", "sweep_keys")
_DECAY_KEY = "optimizer.weight_decay"  # set by the protocol too where the design fixes the decay per step


def arm_overrides(reproduction: Reproduction, variant: str, lr: float) -> list[str]:
    """What the protocol sets for an arm at an lr: its variant, the lr and, where the design fixes the decay per
    step, the weight decay that gives it (the parity check composes every arm with these)."""
    decay = reproduction.decay_per_step
    return [
        f"variant={variant}",
        f"optimizer.lr={lr:.6g}",
        *([] if decay is None else [f"{_DECAY_KEY}={decay / lr:.6g}"]),
    ]


def plan(reproduction: Reproduction, experiment: str, args: argparse.Namespace, extra: list[str]) -> Planner:
    """The design's planner, every arm's config composed and checked for parity first (BadInput if not)."""
    for override in extra:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in _PROTOCOL_KEYS or (key == _DECAY_KEY and reproduction.decay_per_step is not None):
            raise BadInput(
                f"{key}: set by the tuning protocol for every run; drop '{override}' "
                "(use --seeds for the seed count, or scripts/train.py for a single configuration)"
            )
    arms = reproduction.arms_for(args.scale, args.all_arms)
    base = _compose(experiment, extra)
    budgets = reproduction.budgets.get(args.scale, (1.0,))
    full_steps = base.get("trainer", {}).get("max_steps")
    if len(budgets) > 1 and not (isinstance(full_steps, int) and full_steps > 0):
        raise BadInput(
            f"trainer.max_steps: the shortened budgets {budgets} are fractions of it, got {full_steps!r}; "
            f"set it in configs/experiment/{experiment}.yaml"
        )
    design = Design(
        experiment,
        arms,
        seeds=args.seeds or reproduction.seeds,
        points=reproduction.points,
        tune_seeds=reproduction.tune_seeds,
        max_extensions=reproduction.max_extensions,
        decay_per_step=reproduction.decay_per_step,
        **(
            {"grid_centre": reproduction.cpu_centre_source}
            if args.scale == "cpu" and reproduction.cpu_grid_centres
            else {}
        ),
        budgets=budgets,
        full_steps=full_steps if len(budgets) > 1 else None,
    )
    base_seed = int(base.get("seed") or 0)
    centres = reproduction.cpu_grid_centres if args.scale == "cpu" else {}
    yaml_lrs = {
        a.variant: centres.get(a.variant)
        or float(_compose(experiment, [f"variant={a.variant}", *extra])["optimizer"]["lr"])
        for a in arms
    }
    # every arm as the protocol runs it at its yaml lr (weight decay included), checked for parity below; and
    # every planned run's config must be one train.py accepts, before the first one starts
    configs = {v: _compose(experiment, [*arm_overrides(reproduction, v, lr), *extra]) for v, lr in yaml_lrs.items()}
    for arm in arms:
        lr = yaml_lrs[arm.variant]
        _compose(
            experiment,
            [*Job(arm.variant, lr, base_seed, "grid", arm.cost, design.weight_decay_at(lr)).overrides(), *extra],
        )
    check_parity(experiment, configs)
    return Planner(design, yaml_lrs, base_seed)


def check_parity(experiment: str, configs: dict[str, dict]) -> None:
    differences = parity_differences(configs)
    if differences:
        raise BadInput(
            f"{experiment}: the arms differ in what they do not compare ({'; '.join(differences)}); "
            f"set it once for every arm in configs/experiment/{experiment}.yaml"
        )


def _outcome_cases(planner: Planner) -> dict[str, Callable[[Job], float]]:
    """Stand-in outcomes for planning: the yaml lr best (no extension), and ever larger lrs best (every extension)."""
    yaml_lrs = {name: log.yaml_lr for name, log in planner.logs.items()}
    return {
        "no extension": lambda j: abs(math.log(j.lr / yaml_lrs[j.arm])),
        f"every arm extended {planner.design.max_extensions} times": lambda j: -j.lr,
    }


def planned_runs(planner: Planner, jobs: int) -> int:
    """The design's run count with no extension (what ``run k of N`` counts against)."""
    fresh = Planner(planner.design, {n: log.yaml_lr for n, log in planner.logs.items()}, planner.base_seed)
    return simulate(fresh, _outcome_cases(planner)["no extension"], lambda j: 1.0, jobs)[0]


def describe(planner: Planner, reproduction: Reproduction, scale: str, jobs: int) -> list[str]:
    """The plan in words, with its run count and time from :func:`soapbench.tuning.simulate` (an estimate)."""
    design, logs = planner.design, planner.logs
    yaml_lrs = {name: log.yaml_lr for name, log in logs.items()}
    borrowers = [
        f"{a.variant} takes {a.tune_from}'s tuned lr (not tuned: recorded in tuning.json)"
        for a in design.arms
        if a.tune_from
    ]
    lines = [
        f"arms: {', '.join(a.variant for a in design.arms)}",
        f"tuning seeds {planner.tune_seeds}, report seeds {planner.report_seeds} (disjoint); lr grid of "
        f"{design.points} points x{design.factor:.2f} around {design.grid_centre}, extended while the best is on an edge, "
        f"at most {design.max_extensions} times",
        *borrowers,
    ]
    if len(design.budgets) > 1:
        steps = ", ".join(str(design.steps_at(b) or design.full_steps) for b in sorted(design.budgets))
        lines.append(
            f"budgets: the best lr of every arm runs on the report seeds at {steps} steps (each a whole schedule, "
            f"fractions {', '.join(f'{b:g}' for b in sorted(design.budgets))} of the full budget); tuning at the full one"
        )
    if design.decay_per_step is not None:
        lines.append(
            f"weight decay: {design.decay_per_step:g} per step at the peak lr in every run of every arm "
            f"(weight_decay = {design.decay_per_step:g} / lr)"
        )
    unit = reproduction.unit_seconds.get(scale, 0.0)
    for case, final_of in _outcome_cases(planner).items():
        fresh = Planner(design, yaml_lrs, planner.base_seed)
        runs, wall, busy = simulate(fresh, final_of, lambda j: j.cost * unit, jobs)
        if scale == "cpu":
            cost = f"~{wall / 60:.0f} min at {jobs} jobs at a time on idle cores"
        else:
            cost = f"~{busy / 3600:.0f} GPU-hours (~{wall / 3600:.1f} h wall at {jobs} jobs)"
        lines.append(f"planned runs ({case}): {runs}; estimated {cost}")
    source = reproduction.cpu_unit_source if scale == "cpu" else "rough, scaled from the paper's setup"
    lines.append(f"(estimates, not measurements: {source})")
    return lines


def tune_and_seed(reproduction: Reproduction, experiment: str, args: argparse.Namespace, extra: list[str]) -> int:
    planner = plan(reproduction, experiment, args, extra)
    for line in describe(planner, reproduction, args.scale, args.jobs):
        print(line, flush=True)
    if args.dry_run:
        return 0
    results_dir = Path(args.results_dir)
    store = Store(results_dir, experiment, extra)
    log_dir = results_dir / "sweeps" / experiment / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = _thread_overrides(args.jobs)
    gpus = _gpu_count()

    def launch(job: Job, log_path: Path, slot: int) -> subprocess.Popen:
        from soapbench.launch import start_owned_job

        command = train_command(REPO, experiment, args.results_dir, job, extra, threads)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if gpus:  # one slot per GPU (or a share of one): concurrent runs do not pile onto cuda:0
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        # Own session: Ctrl-C reaches only this process, which then stops the jobs in order (SIGTERM);
        # a SIGKILL of this process stops them too (they die with it), so none trains on unobserved.
        return start_owned_job(command, log_path, env)

    def outcome(job: Job) -> float | None:
        final = store.final(job)
        return None if final is False else final

    try:
        counts = run_design(
            planner, launch, outcome, store.final, args.jobs, log_dir, planned=planned_runs(planner, args.jobs)
        )
    finally:
        write_json_atomic(results_dir / "runs" / experiment / "tuning.json", planner.tuning_record())
    print(f"runs: {counts['ran']} run, {counts['reused']} reused from the store, {counts['failed']} failed", flush=True)
    return 1 if counts["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(REPRODUCTIONS), help="which paper comparison")
    parser.add_argument(
        "--scale",
        choices=(*SCALES, "full"),
        default="cpu",
        help="cpu: minutes on a laptop; paper (alias: full): the paper's setup on GPUs, every arm tuned",
    )
    parser.add_argument("--results-dir", default="results", help="the results store (default: results)")
    parser.add_argument("--report-only", action="store_true", help="skip the runs; remake the report from the store")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan, its run count and time estimate; run and write nothing"
    )
    parser.add_argument(
        "--all-arms",
        action="store_true",
        help="at CPU scale, every arm (the default may be a subset that fits its budget)",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time, one thread each (default: cores)"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="report seeds per arm (default: the reproduction's, 3 or 5)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.seeds is not None and args.seeds < 1):
        parser.error("--jobs and --seeds must be positive")
    if args.dry_run and args.report_only:
        parser.error("--dry-run and --report-only exclude each other")
    args.scale = "paper" if args.scale == "full" else args.scale
    problem = None if args.dry_run else output_dir_error(Path(args.results_dir), "--results-dir")
    if problem:  # before composing or running anything: the store must take the runs and the report
        print(f"reproduce: error: {problem}", file=sys.stderr)
        return 2

    reproduction = REPRODUCTIONS[args.name]
    experiment = reproduction.experiments[args.scale]
    print(f"{reproduction.description}\nscale: {args.scale} (experiment={experiment})", flush=True)
    status = 0
    if not args.report_only:
        try:
            status = tune_and_seed(reproduction, experiment, args, extra)
        except BadInput as error:
            print(f"reproduce: error: {error}", file=sys.stderr)
            return 2
        except Interrupted as stop:
            print(
                f"reproduce: interrupted ({stop}); running jobs checkpointed. The same command resumes.",
                file=sys.stderr,
            )
            return 128 + stop.signum
    if args.dry_run:
        return status
    report = [sys.executable, str(REPO / "scripts" / "report.py"), "--experiment", experiment,
              "--results-dir", args.results_dir, "--reference", reproduction.reference,
              "--baseline", reproduction.baseline]  # fmt: skip
    print("$ " + " ".join(report[1:]), flush=True)
    return subprocess.run(report).returncode or status


if __name__ == "__main__":
    sys.exit(main())
