"""Hyperparameter search beyond grids: Optuna TPE / random, or quasi-random (Halton, Sobol) as AlgoPerf does.

A search (``configs/hparams_search/<name>.yaml``) names the run being tuned (train overrides), a space and a
sampler. Every trial is an ordinary run of ``scripts/train.py`` in ``results/runs/<study>/``, named by its
sampled values, so the report reads trials like any other runs. The objective is the final validation loss;
a diverged run scores +inf (a result, not a failure), a run that failed or was rejected is a failed trial.

The study lives in ``results/searches/<study>/study.db`` (Optuna's SQLite storage) beside ``trials.csv``
and one log per trial. It is resumable: the same command continues it until ``trials`` have finished. A
trial whose driver was killed is still RUNNING in the study; the next driver (one at a time, by a lock)
marks it failed and re-asks its parameters, so the same run directory resumes from its last checkpoint and
ends as an uninterrupted run would. Trial processes die with their driver (Linux), so none is orphaned.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soapbench.errors import ConfigError
from soapbench.naming import plain_name
from soapbench.search.space import SearchSpace, parse_space

REPO = Path(__file__).resolve().parents[2]
SEARCH_DIR = REPO / "configs" / "hparams_search"
SAMPLERS = ("tpe", "random", "halton", "sobol")
QUASI_RANDOM = ("halton", "sobol")
_SEARCH_KEYS = ("study", "sampler", "trials", "seed", "overrides", "space")


@dataclass
class Search:
    study: str
    sampler: str
    trials: int
    seed: int
    overrides: list[str]
    space: SearchSpace
    jobs: int = 1
    results_dir: Path = field(default_factory=lambda: Path(os.environ.get("SOAPBENCH_RESULTS", "results")))

    @property
    def directory(self) -> Path:
        return self.results_dir / "searches" / plain_name("study", self.study, "soap_lr_betas_600")

    def trial_overrides(self, params: Mapping[str, Any]) -> list[str]:
        keys = ",".join(self.space.keys)
        return [
            f"experiment_name={self.study}", *self.overrides, *self.space.overrides(params),
            f"paths.results_dir={self.results_dir}", f"sweep_keys=[{keys}]",
            # concurrent trials share the cores (the trainer's thread policy) instead of oversubscribing them
            *([f"trainer.parallel_jobs={self.jobs}"] if self.jobs > 1 else []),
        ]  # fmt: skip


def load_search(name_or_path: str, *, overrides: list[str], trials: int | None, sampler: str | None, study: str | None,
                jobs: int, results_dir: Path | None) -> Search:  # fmt: skip
    from omegaconf import OmegaConf

    path = Path(name_or_path)
    if not path.suffix:
        path = SEARCH_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in SEARCH_DIR.glob("*.yaml")))
        raise ConfigError(f"search: no search {name_or_path!r} ({path}); available: {available}, or a path to a yaml")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    unknown = sorted(set(data) - set(_SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"{path.name}: {unknown[0]}: unknown key; valid: {', '.join(_SEARCH_KEYS)}")
    chosen_sampler = sampler or data.get("sampler", "tpe")
    if chosen_sampler not in SAMPLERS:
        raise ConfigError(f"sampler: unknown {chosen_sampler!r}; valid: {', '.join(SAMPLERS)}")
    count = trials if trials is not None else data.get("trials")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ConfigError(f"trials: must be a positive integer, got {count!r}")
    if jobs < 1:
        raise ConfigError(f"jobs: must be >= 1, got {jobs}")
    # The study names results/searches/<study>/ and, as trials' experiment_name, results/runs/<study>/.
    chosen_study = plain_name("study", study or data.get("study") or path.stem, "soap_lr_betas_600")
    return Search(
        study=chosen_study, sampler=chosen_sampler, trials=count,
        seed=int(data.get("seed", 0)), overrides=[*map(str, data.get("overrides") or []), *overrides],
        space=parse_space(data.get("space"), f"{path.name}: space"), jobs=jobs,
        results_dir=results_dir or Path(os.environ.get("SOAPBENCH_RESULTS", "results")),
    )  # fmt: skip


def plan_trial(overrides: list[str]) -> Any:
    """Compose and validate a trial's config as scripts/train.py would; return where its run lives (run_dir, run_name)."""
    from soapbench.composition import locate_planned_run

    return locate_planned_run(overrides)


def validate_overrides(search: Search) -> None:
    """One trial's config composed before the study exists: bad overrides are refused (exit 2) instead of
    failing every trial and becoming the study's recorded identity."""
    try:
        plan_trial(search.trial_overrides(search.space.quasi_random_params(0, "halton", search.seed)))
    except ConfigError as error:
        raise ConfigError(f"overrides: {error}") from error


def objective(summary: Mapping[str, Any] | None) -> float | None:
    """Final validation loss (whole split if measured); +inf for a diverged run (or a completed one whose loss is not finite); None: failed."""
    if not summary:
        return None
    if summary.get("status") == "diverged":
        return math.inf
    if summary.get("status") != "completed":
        return None
    # The whole validation split when the run measured it (as the reproductions rank), else the fixed eval set.
    value = summary.get("final_full_val_loss")
    value = summary.get("final_val_loss") if value is None else value
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


class _Lock:
    """One driver per study: a second one would mistake the first one's running trials for killed ones."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "w")
        except OSError as error:
            raise ConfigError(
                f"search: cannot write the study folder ({error}); make it writable, "
                "or pass --results-dir / --study elsewhere"
            ) from error
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise ConfigError(
                f"search: another driver is running this study ({self.path}); wait for it or stop it"
            ) from error
        return self

    def __exit__(self, *_):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _sampler(search: Search, trials_so_far: int):
    """Seeded by the search's seed and the study's length: a rerun draws new points instead of replaying the
    first session's random draws (which would repeat its trials), and stays reproducible given the history."""
    import optuna

    seed = search.seed + 1_000_003 * trials_so_far
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=search.jobs > 1)
    return optuna.samplers.RandomSampler(seed=seed)  # random, and the fallback for enqueued quasi-random points


# How long a study locked by another process is waited for before the driver gives up with one line.
STUDY_LOCK_TIMEOUT_S = 5.0


def open_study(search: Search):
    with _study_errors(search):
        return _open_study(search)


@contextlib.contextmanager
def _study_errors(search: Search):
    """A damaged, locked or unwritable study.db (or study folder) as one line naming the file and the fix."""
    import sqlite3

    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    path = search.directory / "study.db"
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError, sqlite3.Error, OSError) as error:
        cause = error
        while cause.__cause__ is not None and not isinstance(cause, sqlalchemy.exc.SQLAlchemyError):
            cause = cause.__cause__
        detail = str(getattr(cause, "orig", None) or cause).splitlines()[0]
        if "locked" in detail:
            fix = f"another process holds it (waited {STUDY_LOCK_TIMEOUT_S:.0f} s); stop it or wait, then re-run"
        elif isinstance(error, OSError) or "readonly" in detail or "unable to open" in detail:
            fix = "make the folder writable, or pass --results-dir / --study elsewhere"
        else:
            fix = f"it is damaged: move it away (the runs under runs/{search.study} are kept) or use --study <new name>"
        raise ConfigError(f"search: {path}: cannot open the study ({detail}); {fix}") from error


def check_study_file(search: Search) -> None:
    """An existing study.db read (never written) before the driver takes its lock or writes anything: a damaged or
    locked one is refused by the same one line as in :func:`open_study`, leaving the study folder as it was."""
    import sqlite3

    path = search.directory / "study.db"
    if not path.is_file():
        return
    with _study_errors(search):
        connection = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=STUDY_LOCK_TIMEOUT_S)
        try:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
        finally:
            connection.close()
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(problems[0] if problems else "no answer to an integrity check")


def _open_study(search: Search):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search.directory.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{(search.directory / 'study.db').resolve()}",
        engine_kwargs={"connect_args": {"timeout": STUDY_LOCK_TIMEOUT_S}},
    )
    study = optuna.create_study(study_name=search.study, storage=storage, direction="minimize", load_if_exists=True)
    study.sampler = _sampler(search, len(study.get_trials(deepcopy=False)))
    identity = {"overrides": search.overrides, "space": {k: repr(v) for k, v in search.space.distributions().items()}}
    recorded = study.user_attrs.get("identity")
    if recorded is None:
        study.set_user_attr("identity", identity)
    elif recorded != identity:
        changed = "overrides" if recorded["overrides"] != identity["overrides"] else "space"
        raise ConfigError(
            f"search: study {search.study!r} was started with other {changed} ({recorded[changed]}); "
            f"use --study <new name> for a different search, or delete {search.directory}"
        )
    return study


def _retries(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if "retry_of" in t.user_attrs)


def finished_trials(study) -> int:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    return len(done) - _retries(study)


def retry_interrupted(study) -> list[int]:
    """Trials left RUNNING by a killed driver: failed, and their parameters asked again (their runs resume)."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("run_dir", "run_name", "error")}
        study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number}, skip_if_exists=False)
    return [t.number for t in stale]


def _next_trial(study, search: Search):
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if search.sampler in QUASI_RANDOM and not waiting:
        used = [t.user_attrs.get("quasi_random_index", -1) for t in study.get_trials(deepcopy=False)]
        index = max(used, default=-1) + 1
        params = search.space.quasi_random_params(index, search.sampler, search.seed)
        study.enqueue_trial(params, user_attrs={"quasi_random_index": index}, skip_if_exists=False)
    return study.ask(search.space.distributions())


def _error_line(log: Path) -> str | None:
    if not log.is_file():
        return None
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error:")]
    return lines[-1] if lines else None


def write_trials(study, search: Search) -> Path:
    """``trials.csv``: one row per trial (number, state, objective, the config values tried, its run)."""
    keys = [d.key if d.index is None else f"{d.key}.{d.index}" for d in search.space.dimensions]
    path = search.directory / "trials.csv"
    temporary = path.with_suffix(".csv.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", "objective", *keys, "run_name", "retry_of", "error"])
        for t in study.get_trials(deepcopy=False):
            writer.writerow([
                t.number, t.state.name.lower(), "" if t.value is None else t.value,
                *(search.space.config_values(t.params).get(k, "") for k in keys),
                t.user_attrs.get("run_name", ""), t.user_attrs.get("retry_of", ""), t.user_attrs.get("error", ""),
            ])  # fmt: skip
    temporary.replace(path)
    return path


def _trial_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_search(search: Search, *, print_line=print) -> Any:
    """Run (or continue) the search until ``search.trials`` trials have finished; return the study."""
    from optuna.trial import TrialState

    check_study_file(search)
    with _Lock(search.directory / "driver.lock"):
        study = open_study(search)
        retried = retry_interrupted(study)
        if retried:
            print_line(f"search {search.study}: trials {retried} were interrupted; their runs resume")
        running: dict[int, tuple[subprocess.Popen, Any, Path]] = {}
        stop = []
        previous = {sig: signal.signal(sig, lambda *_: stop.append(True)) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not stop and (running or finished_trials(study) < search.trials):
                while not stop and len(running) < search.jobs and finished_trials(study) + len(running) < search.trials:
                    trial = _next_trial(study, search)
                    overrides = search.trial_overrides(trial.params)
                    try:
                        plan = plan_trial(overrides)
                    except ConfigError as error:
                        trial.set_user_attr("error", str(error))
                        study.tell(trial, state=TrialState.FAIL)
                        print_line(f"error: trial {trial.number}: {error}")
                        continue
                    trial.set_user_attr("run_name", plan.run_name)
                    log = search.directory / f"trial_{trial.number:04d}.log"
                    with log.open("a") as handle:
                        process = subprocess.Popen(
                            [sys.executable, str(REPO / "scripts" / "train.py"), *overrides], stdout=handle,
                            stderr=subprocess.STDOUT, env=_trial_env(), preexec_fn=_die_with_parent,
                        )  # fmt: skip
                    running[trial.number] = (process, trial, plan.run_dir)
                    print_line(f"search {search.study}: trial {trial.number} -> {plan.run_name}")
                for number, (process, trial, run_dir) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[number]
                    summary_path = run_dir / "summary.json"
                    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
                    value = objective(summary) if process.returncode in (0,) else None
                    if value is None:
                        error = (
                            _error_line(search.directory / f"trial_{number:04d}.log")
                            or f"exit code {process.returncode}"
                        )
                        trial.set_user_attr("error", error)
                        study.tell(trial, state=TrialState.FAIL)
                        print_line(f"search {search.study}: trial {number} failed: {error}")
                    else:
                        study.tell(trial, value)
                        print_line(f"search {search.study}: trial {number} = {value:.4f} ({summary['status']})")
                    write_trials(study, search)
                if running:
                    time.sleep(0.5)
        finally:
            for process, _, _ in running.values():  # stopped: each run checkpoints on SIGTERM and resumes next time
                process.send_signal(signal.SIGTERM)
            for process, _, _ in running.values():
                process.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            write_trials(study, search)
    return study


def best_line(study, search: Search) -> str:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finite = [t for t in complete if math.isfinite(t.value)]
    if not finite:
        return (
            f"no finite objective yet ({len(complete)} completed trials diverged)"
            if complete
            else "no completed trial yet"
        )
    best = min(finite, key=lambda t: t.value)
    values = search.space.config_values(best.params)
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    return f"best: trial {best.number}, final val loss {best.value:.4f} ({params}) -> {best.user_attrs.get('run_name')}"
