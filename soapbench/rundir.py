"""Which directory a run writes to, who may write it, and what to do when it already exists.

A run is named ``<optimizer>-<model>[-<swept values>]-s<seed>-<identity hash>`` (see
:mod:`soapbench.naming` and :mod:`soapbench.identity`). The name is a label; the identity hash at its end
is what finds a run: running the same config on the same data again finds the directory ending in its
hash, whatever swept values the sweep that made it put in its name, so two sweeps that share a
configuration train it once. Choosing (or creating) that directory is serialised by an ``flock`` on the
experiment directory, so two sweeps started at once cannot each create their own copy. One process at a
time trains a directory: it holds an exclusive ``flock`` on ``.lock`` inside it, which the OS releases
when the process dies, so a killed run never blocks the next one. Under the lock: a finished run
(completed, diverged or failed — all results) is skipped, an interrupted one resumes from its checkpoint (the previous one if the latest
is unreadable), and one killed before its first checkpoint starts over. A stored result whose
identity differs from the config asking for it is never skipped to or resumed from silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soapbench.errors import ConfigError, RunBusyError, SoapbenchError
from soapbench.identity import RunIdentity, describe_differences
from soapbench.naming import experiment_folder, plain_name
from soapbench.naming import run_name as descriptive_name
from soapbench.results import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, RunStore, remove_stale_temp_files

FINISHED = ("completed", "diverged", "failed")
LOCK_FILE = ".lock"


@dataclass
class RunPlan:
    run_dir: Path
    run_name: str
    config_hash: str
    # "fresh", "resume" or "skip"
    action: str
    # Checkpoints to try in order (the latest, then the previous one); an explicit resume= gives one.
    checkpoints: list[Path] = field(default_factory=list)
    previous_summary: dict[str, Any] | None = None
    # True for resume=<path>: the checkpoint may come from another run directory.
    explicit: bool = False


def run_name(cfg: Mapping[str, Any], identity_hash: str) -> str:
    """The directory name: ``run_name`` if set, else what the run is (and what its sweep varies) plus its identity hash."""
    return plain_name("run_name", cfg.get("run_name") or descriptive_name(cfg, identity_hash), "soap_lr3e-3")


def experiment_directory(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg["paths"]["results_dir"]) / "runs" / experiment_folder(cfg.get("experiment_name"))


def run_directory(cfg: Mapping[str, Any], name: str) -> Path:
    return experiment_directory(cfg) / plain_name("run_name", name, "soap_lr3e-3")


def find_run_directory(cfg: Mapping[str, Any], identity_hash: str) -> tuple[Path, str]:
    """The directory of this identity: an existing one ending in its hash if there is one, else a new name.

    A hand-picked ``run_name`` is taken as given. Of several existing directories of one identity (made by
    older versions, whose names decided), the one this config would name wins, else the first by name.
    """
    name = run_name(cfg, identity_hash)
    if cfg.get("run_name"):
        return run_directory(cfg, name), name
    existing = same_identity_directories(experiment_directory(cfg), identity_hash)
    if existing and name not in [d.name for d in existing]:
        name = existing[0].name
    return run_directory(cfg, name), name


def same_identity_directories(experiment_dir: Path, identity_hash: str) -> list[Path]:
    try:
        return sorted(d for d in Path(experiment_dir).glob(f"*-{identity_hash}") if d.is_dir())
    except OSError:  # unreadable: nothing to find there
        return []


@dataclass
class RunLocation:
    run_dir: Path
    run_name: str
    identity: RunIdentity


def locate_run(cfg: Mapping[str, Any]) -> RunLocation:
    """Where the run of a resolved config lives, without training it (the data are read to fingerprint them)."""
    from soapbench.identity import run_identity
    from soapbench.workloads import data_fingerprint

    identity = run_identity(cfg, data_fingerprint(cfg))
    run_dir, name = find_run_directory(cfg, identity.hash)
    return RunLocation(run_dir, name, identity)


class RunLock:
    """Exclusive, non-blocking ownership of a run directory for this process's lifetime (or until released)."""

    def __init__(self, run_dir: Path, results_dir: Path | None = None, created_dir: Path | None = None):
        self.run_dir = Path(run_dir)
        self.results_dir = Path(results_dir) if results_dir is not None else self.run_dir
        self.path = self.run_dir / LOCK_FILE
        self._handle = None
        # The outermost directory made for this run (by the caller, or here), so an unused run leaves no empty folders.
        self._created_dir: Path | None = created_dir

    def acquire(self) -> RunLock:
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self._created_dir = self._created_dir or (missing[-1] if missing else None)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _unwritable(self.results_dir, error) from error
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "unknown"
            handle.close()  # the holder's lock stays: it is its descriptor's, not the file's
            raise RunBusyError(
                f"{self.run_dir} is being trained by another process (pid {holder}); "
                "wait for it to finish or stop it, then run this command again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        if self._created_dir is not None and [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
            # Nothing was written (bad input, a skip): leave no empty run directory behind.
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: another process has just started there
                for directory in (self.run_dir, *self.run_dir.parents):
                    directory.rmdir()
                    if directory == self._created_dir:
                        break
        self._handle.close()  # closing the descriptor drops the flock
        self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _unwritable(results_dir: Path, error: OSError) -> SoapbenchError:
    return SoapbenchError(
        f"paths.results_dir: cannot write under {results_dir} ({error.strerror or error}); "
        "point paths.results_dir (or SOAPBENCH_RESULTS) at a writable folder"
    )


def lock_run_directory(cfg: Mapping[str, Any], identity_hash: str) -> RunLock:
    """Find (or make) this identity's run directory and lock it, as one step for every process of the store.

    The experiment directory is ``flock``ed while its run directories are searched and the chosen one is
    locked, so a second sweep that meets the same configuration at the same moment waits, then finds the
    directory the first made (and gets :class:`RunBusyError` while it trains) instead of making its own.
    """
    results_dir = Path(cfg["paths"]["results_dir"])
    experiment_dir = experiment_directory(cfg)
    missing = [p for p in (experiment_dir, *experiment_dir.parents) if not p.exists()]
    try:
        experiment_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(experiment_dir, os.O_RDONLY)
    except OSError as error:
        raise _unwritable(results_dir, error) from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        run_dir, _ = find_run_directory(cfg, identity_hash)
        created = missing[-1] if missing else None
        return RunLock(run_dir, results_dir, created_dir=created).acquire()
    except BaseException:
        with contextlib.suppress(OSError):  # leave no empty folders this call made
            for directory in [experiment_dir, *experiment_dir.parents][: len(missing)]:
                directory.rmdir()
        raise
    finally:
        os.close(fd)  # drops the flock on the experiment directory


def _refuse_other_identity(where: str, stored: Mapping[str, Any] | None, identity: RunIdentity, fix: str) -> None:
    differing = identity.differing_keys(stored)
    if differing:
        raise ConfigError(
            f"{where} holds a run of a different config (differs in {describe_differences(differing)}); {fix}"
        )


def plan_run(cfg: Mapping[str, Any], run_dir: Path, name: str, identity: RunIdentity) -> RunPlan:
    """Decide what to do with ``run_dir``; call with its lock held. Cleans temp files of killed writers."""
    resume = str(cfg.get("resume", "auto"))
    store = RunStore(run_dir)
    remove_stale_temp_files(run_dir)
    summary = store.read_summary()

    if resume not in ("auto", "never"):
        checkpoint = Path(resume)
        if checkpoint.is_dir():
            checkpoint = checkpoint / CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise ConfigError(
                f"resume: no checkpoint at {checkpoint}; pass a checkpoint file or a run directory holding one"
            )
        return RunPlan(run_dir, name, identity.hash, "resume", [checkpoint], summary, explicit=True)

    if resume == "never" and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ConfigError(
            f"resume: run directory {run_dir} already exists; use resume=auto to continue it or set run_name for a new run"
        )
    if summary and "identity" in summary:
        # Only a hand-picked run_name can lead a different config here; its hash is in the default name.
        _refuse_other_identity(
            f"run_name: {run_dir}", summary["identity"], identity, "choose another run_name or delete that directory"
        )
    if summary and summary.get("status") in FINISHED:
        return RunPlan(run_dir, name, identity.hash, "skip", [], summary)
    checkpoints = [p for p in (store.checkpoint_path, run_dir / PREVIOUS_CHECKPOINT_FILE) if p.is_file()]
    if checkpoints:
        return RunPlan(run_dir, name, identity.hash, "resume", checkpoints, summary)
    return RunPlan(run_dir, name, identity.hash, "fresh", [], summary)
