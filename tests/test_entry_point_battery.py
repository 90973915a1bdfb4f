"""Bad input to every non-training entry point, through the real scripts: exit 2, one ``error:`` line naming the
problem, no traceback, and nothing written (the scratch folder, the fixture store and the working folder are
listed before and after).

Each case fails before any training; ``{tmp}`` is the case's scratch folder (with ``a_file``, a plain file to put
paths under), ``{store}`` a small synthetic run store shared by the report and export cases.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import synthetic_runs as syn

from tests.conftest import REPO

TIMEOUT_S = 120
EXPERIMENT = "battery"
ROOT = os.geteuid() == 0  # root writes into read-only folders, so those cases cannot be staged


def _damage_study(kind: str):
    """A study folder for soap_lr_betas holding a study.db of ``kind`` (random bytes, truncated)."""

    def setup(tmp: Path) -> None:
        folder = tmp / "results" / "searches" / "soap_lr_betas"
        folder.mkdir(parents=True)
        if kind == "random":
            (folder / "study.db").write_bytes(os.urandom(4096))
            return
        whole = tmp / "whole.db"
        with sqlite3.connect(whole) as connection:
            connection.execute("create table t(x)")
            connection.executemany("insert into t values (?)", [("x" * 500,)] * 200)
        (folder / "study.db").write_bytes(whole.read_bytes()[:3000])
        whole.unlink()

    return setup


def _read_only(relative: str):
    def setup(tmp: Path) -> None:
        folder = tmp / relative
        folder.mkdir(parents=True)
        folder.chmod(0o555)

    return setup


# (script, arguments, what the error line must contain, setup of {tmp} or None)
CASES = [
    # reproduce.py
    ("reproduce.py", "whitening_nanogpt --results-dir {tmp}/a_file/results", "a_file is a file", None),
    ("reproduce.py", "whitening_nanogpt --results-dir {tmp}/a_file", "not a folder", None),
    ("reproduce.py", "whitening_nanogpt --results-dir {tmp}/ro/results", "not writable", _read_only("ro")),
    ("reproduce.py", "whitening_nanogpt --results-dir {tmp}/r -- foo=1", "foo: unknown key", None),
    ("reproduce.py", "whitening_nanogpt --results-dir {tmp}/r -- model=nonexistent", "no such model config", None),
    ("reproduce.py", "whitening_nanogpt --results-dir {tmp}/r -- trainer.max_steps=abc", "trainer.max_steps", None),
    ("reproduce.py", "whitening_nanogpt --results-dir {tmp}/r -- optimizer.lr=0.1", "set by the tuning protocol", None),
    ("reproduce.py", "whitening_nanogpt --jobs 0", "--jobs and --seeds must be positive", None),
    ("reproduce.py", "nonexistent", "invalid choice", None),
    # search.py
    ("search.py", "soap_lr_betas foo=1 --results-dir {tmp}/results", "foo: unknown key", None),
    ("search.py", "soap_lr_betas model=nonexistent --results-dir {tmp}/results", "no such model config", None),
    ("search.py", "soap_lr_betas trainer.max_steps=abc --results-dir {tmp}/results", "trainer.max_steps", None),
    ("search.py", "nonexistent --results-dir {tmp}/results", "no search 'nonexistent'", None),
    ("search.py", "soap_lr_betas --trials 0 --results-dir {tmp}/results", "trials: must be a positive integer", None),
    ("search.py", "soap_lr_betas --jobs 0 --results-dir {tmp}/results", "jobs: must be >= 1", None),
    ("search.py", "soap_lr_betas --sampler bogus --results-dir {tmp}/results", "invalid choice", None),
    (
        "search.py",
        "soap_lr_betas --results-dir {tmp}/results",
        "study.db: cannot open the study (file is not a database)",
        _damage_study("random"),
    ),
    (
        "search.py",
        "soap_lr_betas --results-dir {tmp}/results",
        "study.db: cannot open the study (database disk image is malformed)",
        _damage_study("truncated"),
    ),
    ("search.py", "soap_lr_betas --results-dir {tmp}/a_file/results", "cannot write the study folder", None),
    ("search.py", "soap_lr_betas --results-dir {tmp}/ro", "study", _read_only("ro")),
    # report.py
    (
        "report.py",
        "--experiment battery --results-dir {store} --out {tmp}/r --baseline nonexistent",
        "--baseline nonexistent: no such optimizer",
        None,
    ),
    (
        "report.py",
        "--experiment battery --results-dir {store} --out {tmp}/r --metric val/nonexistent",
        "--metric val/nonexistent: no run logs it",
        None,
    ),
    ("report.py", "--experiment battery --results-dir {store} --out {tmp}/a_file/r", "a_file is a file", None),
    ("report.py", "--experiment battery --results-dir {store} --out {tmp}/a_file", "not a folder", None),
    ("report.py", "--experiment battery --results-dir {store} --out {tmp}/ro/r", "not writable", _read_only("ro")),
    (
        "report.py",
        "--experiment battery --results-dir {store} --out {tmp}/r --target -5",
        "--target -5.0: must be a positive",
        None,
    ),
    (
        "report.py",
        "--experiment battery --results-dir {store} --out {tmp}/r --target nan",
        "--target nan: must be a positive",
        None,
    ),
    (
        "report.py",
        "--experiment battery --results-dir {store} --out {tmp}/r --target inf",
        "--target inf: must be a positive",
        None,
    ),
    ("report.py", "--experiment nonexistent --results-dir {store} --out {tmp}/r", "nonexistent", None),
    (
        "report.py",
        "--experiment battery --results-dir {store} --out {tmp}/r --reference nonexistent",
        "nonexistent",
        None,
    ),
    ("report.py", "--experiment battery --results-dir {tmp}/nowhere --out {tmp}/r", "nowhere", None),
    # check_optimizer.py
    ("check_optimizer.py", "torch.optim.AdamW --no-training --no-contract --kwargs lr=abc", "--kwargs lr='abc'", None),
    ("check_optimizer.py", "torch.optim.AdamW --no-training --no-contract --kwargs lr=-1", "--kwargs lr=-1", None),
    (
        "check_optimizer.py",
        "torch.optim.AdamW --no-training --no-contract --kwargs betas=[0.9]",
        "--kwargs betas=[0.9]",
        None,
    ),
    ("check_optimizer.py", "adamw --no-training --no-contract --kwargs lr=-1", "lr", None),
    (
        "check_optimizer.py",
        "adamw --no-training --no-contract --golden nonexistent",
        "--golden nonexistent: no golden run",
        None,
    ),
    ("check_optimizer.py", "adamw --no-training --no-contract --json {tmp}/a_file/rows.json", "a_file is a file", None),
    ("check_optimizer.py", "adamw --no-training --no-contract --json {tmp}", "is a folder", None),
    (
        "check_optimizer.py",
        "adamw --no-training --no-contract --json {tmp}/ro/rows.json",
        "not writable",
        _read_only("ro"),
    ),
    ("check_optimizer.py", "nonexistent --no-training --no-contract", "neither an optimizer yaml", None),
    ("check_optimizer.py", "adamw --no-training --no-contract --kwargs notapair", "is not name=value", None),
    ("check_optimizer.py", "adamw --steps 1", "--steps must be >= 2", None),
    # bench_optimizers.py
    ("bench_optimizers.py", "--model nonexistent --out {tmp}/b", "nonexistent", None),
    ("bench_optimizers.py", "--model nanogpt_char_cpu --optimizers nonexistent --out {tmp}/b", "nonexistent", None),
    ("bench_optimizers.py", "--warmup 0 --out {tmp}/b", "--warmup must be >= 1", None),
    (
        "bench_optimizers.py",
        "--model nanogpt_char_cpu --optimizers adamw --out {tmp}/a_file/b",
        "a_file is a file",
        None,
    ),
    (
        "bench_optimizers.py",
        "--model nanogpt_char_cpu --optimizers adamw --ratio-variant bogus --out {tmp}/b",
        "--ratio-variant 'bogus'",
        None,
    ),
    # optimizer_memory.py
    ("optimizer_memory.py", "--model nonexistent", "nonexistent", None),
    ("optimizer_memory.py", "--model nanogpt_char_cpu --optimizers nonexistent", "nonexistent", None),
    (
        "optimizer_memory.py",
        "--model nanogpt_char_cpu --optimizers adamw --json {tmp}/a_file/m.json",
        "a_file is a file",
        None,
    ),
    # device_check.py
    ("device_check.py", "--tiny --sections bogus --out {tmp}/d", "--sections: unknown bogus", None),
    ("device_check.py", "--tiny --steps 0 --out {tmp}/d", "--steps must be >= 1", None),
    ("device_check.py", "--tiny --out {tmp}/a_file/d", "a_file is a file", None),
    # export.py
    ("export.py", "--results-dir {tmp}/nowhere --out {tmp}/e", "nowhere", None),
    ("export.py", "--results-dir {store} --experiment nonexistent --out {tmp}/e", "nonexistent", None),
    ("export.py", "--results-dir {store} --out {tmp}/a_file/e", "a_file", None),
    # leaderboard.py
    ("leaderboard.py", "--reproductions-dir {tmp}/nowhere --out {tmp}/l", "no */report.csv", None),
    ("leaderboard.py", "--reproductions-dir {repo}/results/reproductions --out {tmp}/a_file", "--out", None),
    (
        "leaderboard.py",
        "--reproductions-dir {repo}/results/reproductions --out {tmp}/a_file/l",
        "a_file is a file",
        None,
    ),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two optimizers, two seeds each, as the trainer writes them."""
    root = tmp_path_factory.mktemp("store")
    for optimizer, final in (("adamw", 3.0), ("soap", 2.8)):
        for seed in (0, 1):
            config = syn.base_config(EXPERIMENT, optimizer, seed, 1e-3, 40)
            evals = [(step, step * 0.1, final + 1.0 - step / 40 + 0.01 * seed) for step in (10, 20, 30, 40)]
            syn.write_run(root, EXPERIMENT, f"{optimizer}_s{seed}", config, evals)
    return root


def _listing(*folders: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            stat = path.lstat()
            found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def _error_lines(script: str, stderr: str) -> list[str]:
    prefixes = ("error:", f"{script.removesuffix('.py')}: error:", f"{script}: error:")
    return [line for line in stderr.splitlines() if line.startswith(prefixes)]


@pytest.mark.parametrize(
    ("script", "arguments", "expected", "setup"),
    CASES,
    ids=[f"{c[0]}:{c[1].split('{')[0].strip() or c[1]}:{c[2][:30]}" for c in CASES],
)
def test_bad_input_is_one_line_exit_2_nothing_written(script, arguments, expected, setup, store, tmp_path):
    if setup is not None and setup.__qualname__.startswith("_read_only") and ROOT:
        pytest.skip("root writes into read-only folders")
    scratch, work = tmp_path / "scratch", tmp_path / "work"
    scratch.mkdir()
    work.mkdir()  # the working folder: default outputs (results/...) would land here
    (scratch / "a_file").write_text("a plain file\n")
    if setup is not None:
        setup(scratch)
    before = _listing(scratch, store, work)
    args = arguments.format(tmp=scratch, store=store, repo=REPO).split()
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                            timeout=TIMEOUT_S, cwd=work)  # fmt: skip
    for path in scratch.rglob("*"):  # let pytest remove what the read-only cases made
        path.chmod(0o755) if path.is_dir() else None
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = _error_lines(script, result.stderr)
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert _listing(scratch, store, work) == before, "bad input wrote files"
    assert time.monotonic() - started < TIMEOUT_S


def test_a_locked_study_waits_a_bounded_time_then_one_line(tmp_path):
    """Another process holding study.db: the driver waits (a few seconds), then refuses without writing."""
    from soapbench.search.driver import STUDY_LOCK_TIMEOUT_S

    folder = tmp_path / "results" / "searches" / "soap_lr_betas"
    folder.mkdir(parents=True)
    database = folder / "study.db"
    with sqlite3.connect(database) as connection:
        connection.execute("create table t(x)")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(database)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(60)\n"
    )], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _listing(tmp_path)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "search.py"), "soap_lr_betas",
                                 "--results-dir", str(tmp_path / "results")],
                                capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)  # fmt: skip
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-2000:]
    lines = _error_lines("search.py", result.stderr)
    assert len(lines) == 1 and "database is locked" in lines[0] and "another process holds it" in lines[0], (
        result.stderr
    )
    assert waited >= STUDY_LOCK_TIMEOUT_S
    assert _listing(tmp_path) == before


def test_the_input_checks_accept_a_baseline_named_by_optimizer_or_arm(tmp_path):
    """The baseline check finds a baseline as the analysis does: an optimizer's name ("soap") picks its best arm
    ("soap f=10"), so refusing it would break reproductions (kl_methods compares against "shampoo")."""
    for seed in (0, 1):
        config = syn.base_config(EXPERIMENT, "soap", seed, 1e-3, 40, precondition_frequency=10)
        syn.write_run(tmp_path / "store", EXPERIMENT, f"soap_s{seed}", config, [(20, 2.0, 3.5), (40, 4.0, 3.0 + seed)])
    for baseline in ("soap", "soap f=10"):
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), "--experiment", EXPERIMENT,
                                 "--results-dir", str(tmp_path / "store"), "--out", str(tmp_path / "out"),
                                 "--baseline", baseline, "--no-figures"],
                                capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert "soap f=10" in result.stdout
