"""Reproduce a paper comparison with one command: tune and seed every arm, then report ours beside the paper's.

    python scripts/reproduce.py whitening_nanogpt --scale cpu            # the main job
    python scripts/reproduce.py whitening_nanogpt --scale full --jobs 8   # 8 GPUs: one run on each

Each reproduction is an experiment preset per scale (``configs/experiment/``), a design of arms
(``configs/variant/`` yamls) and a reference file of paper numbers (``results/reference/``). Every arm's
learning rate is tuned on a log grid around its yaml value and the best runs on several seeds
(:mod:`soapbench.tuning`); expensive siblings (f = 1) reuse their cheap sibling's tuned lr. Runs go
``--jobs`` at a time with one thread each. Re-running is safe: finished runs are reused, interrupted ones
resume. Ctrl-C or SIGTERM checkpoints the running jobs and stops the whole reproduction (exit 130/143);
the same command continues it. Everything after ``--`` is passed to every run (extra overrides), except what the protocol sets (lr, seed, variant).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from soapbench.tuning import Arm, Design, Interrupted, Job, Planner, run_design, train_command, write_json_atomic  # noqa: E402


@dataclass(frozen=True)
class Reproduction:
    description: str
    experiments: dict[str, str]  # scale -> experiment preset
    reference: str
    compute: dict[str, str]
    # The optimizer whose best final loss is the target for steps/time-to-target and efficiency ratios.
    baseline: str = "adamw"
    arms: tuple[Arm, ...] = ()  # empty: the preset's own grid sweep (hydra.sweeper.params), untuned
    seeds: int = 3
    points: int = 3  # lr grid points before any edge extension

    def arms_for(self, scale: str) -> tuple[Arm, ...]:
        """At CPU scale expensive siblings borrow a tuned lr; at full scale every arm is tuned."""
        return self.arms if scale == "cpu" else tuple(replace(a, tune_from=None) for a in self.arms)


REPRODUCTIONS = {
    "whitening_nanogpt": Reproduction(
        "(a) gradient-whitening paper: AdamW vs Shampoo vs SOAP at precondition frequency 1 and 10, nanoGPT char",
        {"cpu": "whitening_nanogpt_cpu", "full": "whitening_nanogpt"},
        "whitening_nanogpt",
        {"cpu": "about 21 minutes on 2 idle CPU cores (measured: 24 runs)", "full": "about 25 runs, about 3 H100-hours"},
        arms=(Arm("adamw", 1.0), Arm("shampoo_f10", 2.5), Arm("soap_f10", 3.0),
              Arm("shampoo_f1", 12.0, tune_from="shampoo_f10"), Arm("soap_f1", 10.0, tune_from="soap_f10")),
    ),
    "whitening_colorization": Reproduction(
        "(b) gradient-whitening paper: Adam vs Shampoo vs SOAP (frequency 1 and 10) on image colorization",
        {"cpu": "whitening_colorization_cpu", "full": "whitening_colorization"},
        "whitening_colorization",
        {"cpu": "about 10 minutes on 2 idle CPU cores (measured: 22 runs)", "full": "about 25 runs, about 5 H100-hours"},
        arms=(Arm("adamw", 1.0), Arm("shampoo_f10", 1.5), Arm("soap_f10", 1.5),
              Arm("shampoo_f1", 4.0, tune_from="shampoo_f10"), Arm("soap_f1", 4.0, tune_from="soap_f10")),
    ),
    "soap_lm": Reproduction(
        "(c) SOAP paper: AdamW vs Shampoo vs SOAP on 360m/660m LMs (lr sweep, frequency ablation, efficiency fit)",
        {"cpu": "soap_lm_cpu", "full": "soap_lm_360m"},
        "soap_lm",
        {"cpu": "about 30 minutes on 2 idle CPU cores (measured: 27 runs)", "full": "about 40 runs of ~4 H100-hours: a cluster job (hydra/launcher=slurm)"},
    ),
    "soap_muon": Reproduction(
        "(d) SOAP-Muon report: Muon vs SOAP-Muon at precondition frequency 1 and 40",
        {"cpu": "soap_muon_cpu", "full": "soap_muon_124m"},
        "soap_muon",
        {"cpu": "about 15 minutes on 2 idle CPU cores (measured: 14 runs)", "full": "about 20 runs of ~2.5 H100-hours"},
        baseline="muon",
        arms=(Arm("muon", 3.0), Arm("soap_muon_f40", 3.0), Arm("soap_muon_f1", 8.0, tune_from="soap_muon_f40")),
    ),
    "kl_methods": Reproduction(
        "(e) KL paper: KL-Shampoo and KL-SOAP vs Shampoo and SOAP",
        {"cpu": "kl_methods_cpu", "full": "kl_methods_124m"},
        "kl_methods",
        {"cpu": "about 19 minutes on 2 idle CPU cores (measured: 24 runs)", "full": "about 20 runs of ~3 H100-hours"},
        baseline="shampoo",
        arms=(Arm("shampoo_f10", 1.0), Arm("soap_f10", 1.0), Arm("kl_shampoo_f10", 1.2), Arm("kl_soap_f10", 1.2)),
    ),
}


class BadInput(Exception):
    """An override or config the runs would reject: one line, exit 2, before anything runs or is written."""


def _compose(experiment: str, overrides: list[str]) -> dict:
    """The resolved, validated config a ``train.py experiment=<experiment> <overrides>`` run would train."""
    from hydra import compose, initialize_config_dir

    from soapbench.cli import USER_ERRORS, hydra_error_line, resolve
    from soapbench.config import load_trainer_config, validate_run_config

    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            config = resolve(compose(config_name="train", overrides=[f"experiment={experiment}", *overrides]))
        validate_run_config(config)
        load_trainer_config(config["trainer"])
    except USER_ERRORS as error:
        raise BadInput(str(error)) from error
    except Exception as error:
        line = hydra_error_line(error)
        if line is None:
            raise
        raise BadInput(line) from error
    lr = config.get("optimizer", {}).get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise BadInput(f"optimizer.lr: expected a positive number, got {lr!r}")
    return config


class Store:
    """Finds a planned run's directory in the results store by its config (up to paths and bookkeeping)."""

    def __init__(self, results_dir: Path, experiment: str, extra: list[str]) -> None:
        self.root = results_dir / "runs" / experiment
        self.experiment, self.extra = experiment, extra
        self.keys: dict[Job, tuple] = {}

    def _key(self, job: Job) -> tuple:
        from soapbench.report.store import Run, config_key

        if job not in self.keys:
            config = _compose(self.experiment, [*job.overrides(), *self.extra])
            run = Run("planned", self.experiment, "planned", config, None, None, "planned")
            self.keys[job] = config_key(run)[1]
        return self.keys[job]

    def find(self, job: Job):
        from soapbench.report.store import config_key, load_run_dir

        if not self.root.is_dir():
            return None
        key = self._key(job)
        for run_dir in sorted(self.root.iterdir()):
            if run_dir.is_dir() and (run_dir / "config.yaml").exists():
                run = load_run_dir(run_dir, self.experiment)
                # the config key leaves the seed out (it groups seeds into configurations); a run is both
                if run.config and str(run.seed) == str(job.seed) and config_key(run)[1] == key:
                    return run
        return None

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


def tune_and_seed(reproduction: Reproduction, experiment: str, args: argparse.Namespace, extra: list[str]) -> int:
    for override in extra:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in _PROTOCOL_KEYS:
            raise BadInput(f"{key}: set by the tuning protocol for every run; drop '{override}' "
                           "(use --seeds for the seed count, or scripts/train.py for a single configuration)")
    arms = reproduction.arms_for(args.scale)
    design = Design(experiment, arms, seeds=args.seeds or reproduction.seeds, points=reproduction.points)
    base = _compose(experiment, extra)
    yaml_lrs = {a.variant: float(_compose(experiment, [f"variant={a.variant}", *extra])["optimizer"]["lr"]) for a in arms}
    # every planned run's config must be one train.py accepts, before the first one starts
    for arm in arms:
        _compose(experiment, [*Job(arm.variant, yaml_lrs[arm.variant], int(base.get("seed") or 0),
                                   "grid", arm.cost).overrides(), *extra])
    planner = Planner(design, yaml_lrs)
    planner.base_seed = int(base.get("seed") or 0)
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

    print(f"arms: {', '.join(a.variant for a in arms)}; lr grid x{design.factor:.2f} around each yaml lr, "
          f"{design.points} points, then {design.seeds} seeds; {args.jobs} jobs at a time, 1 thread each", flush=True)
    try:
        counts = run_design(planner, launch, outcome, store.final, args.jobs, log_dir)
    finally:
        write_json_atomic(results_dir / "runs" / experiment / "tuning.json",
                          planner.tuning_record())
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
    parser.add_argument("--scale", choices=("cpu", "full"), default="cpu", help="cpu: minutes on a laptop; full: the paper's setup on GPUs")
    parser.add_argument("--results-dir", default="results", help="the results store (default: results)")
    parser.add_argument("--report-only", action="store_true", help="skip the runs; remake the report from the store")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time, one thread each (default: cores)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm's best configuration (default 3)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.seeds is not None and args.seeds < 1):
        parser.error("--jobs and --seeds must be positive")

    reproduction = REPRODUCTIONS[args.name]
    experiment = reproduction.experiments[args.scale]
    print(f"{reproduction.description}\nscale: {args.scale} (expected compute: {reproduction.compute[args.scale]})", flush=True)
    status = 0
    if not args.report_only:
        try:
            if reproduction.arms:
                status = tune_and_seed(reproduction, experiment, args, extra)
            else:
                sweep = [sys.executable, str(REPO / "scripts" / "train.py"), "-m", f"experiment={experiment}",
                         f"paths.results_dir={args.results_dir}", *extra]  # fmt: skip
                print("$ " + " ".join(sweep[1:]) + "  (this reproduction's own grid, not tuned per arm)", flush=True)
                if subprocess.run(sweep).returncode != 0:
                    print(f"reproduce: error: the sweep for {experiment} did not start (see above)", file=sys.stderr)
                    return 2
        except BadInput as error:
            print(f"reproduce: error: {error}", file=sys.stderr)
            return 2
        except Interrupted as stop:
            print(f"reproduce: interrupted ({stop}); running jobs checkpointed. The same command resumes.", file=sys.stderr)
            return 128 + stop.signum
    report = [sys.executable, str(REPO / "scripts" / "report.py"), "--experiment", experiment,
              "--results-dir", args.results_dir, "--reference", reproduction.reference,
              "--baseline", reproduction.baseline]  # fmt: skip
    print("$ " + " ".join(report[1:]), flush=True)
    return subprocess.run(report).returncode or status


if __name__ == "__main__":
    sys.exit(main())
