"""Sweeps end to end: a grid via Hydra multirun, re-running skips finished runs, a diverging arm is a
result, and the report reads the store the sweep wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from omegaconf import OmegaConf

from tests.conftest import REPO, run_cli

GRID = ["-m", "optimizer.lr=1e-3,10", "trainer.max_steps=6", "trainer.eval_interval=3", "trainer.divergence_factor=1.5",
        "experiment_name=grid"]  # fmt: skip


def _summaries(results_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in (results_dir / "runs" / "grid").glob("*/summary.json")}


def test_grid_reruns_skip_finished_runs_and_the_report_shows_the_diverged_arm(results_dir, tmp_path) -> None:
    first = run_cli(GRID, results_dir)
    assert first.returncode == 0, first.stderr
    summaries = _summaries(results_dir)
    assert sorted(s["status"] for s in summaries.values()) == ["completed", "diverged"]
    names = sorted(summaries)  # the run directory (and W&B name) carries the swept value, not only a hash
    assert [name.rsplit("-", 1)[0] for name in names] == [
        "adamw-nanogpt_char_cpu-lr10-s1337",
        "adamw-nanogpt_char_cpu-lr1e-3-s1337",
    ]

    second = run_cli(GRID, results_dir)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("skipping") == 2, "both finished runs (completed and diverged) are kept, not rerun"
    assert _summaries(results_dir) == summaries

    out = tmp_path / "report"
    report = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "report.py"), "--experiment", "grid", "--results-dir", str(results_dir),
         "--out", str(out), "--no-figures"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    table = (out / "report.md").read_text()
    assert "diverged" in table
    sources = json.loads((out / "sources.json").read_text())
    assert any(run.get("status") == "diverged" for run in sources["runs"])


OVERLAP = ["trainer.max_steps=4", "trainer.eval_interval=2", "trainer.checkpoint_interval=2", "trainer.schedule.warmup_steps=1",
           "experiment_name=overlap"]  # fmt: skip


def test_a_configuration_two_sweeps_share_is_trained_once_and_counted_once(results_dir, capsys) -> None:
    from soapbench.report.store import load_experiment

    first = run_cli(["-m", "optimizer.lr=1e-3,3e-3", "seed=0", *OVERLAP], results_dir)
    assert first.returncode == 0, first.stderr
    # Another sweep varies other keys, so it would name lr=3e-3, seed=0 differently: the hash finds the run.
    second = run_cli(["-m", "optimizer.lr=3e-3", "seed=0,1", *OVERLAP], results_dir)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("skipping") == 1, second.stdout
    run_dirs = sorted(d for d in (results_dir / "runs" / "overlap").iterdir() if d.is_dir())
    hashes = [d.name.rsplit("-", 1)[1] for d in run_dirs]
    assert len(run_dirs) == 3 and len(set(hashes)) == 3, [d.name for d in run_dirs]
    # Each sweep kept its own record of what it varied (a shared multirun.yaml was overwritten by the next sweep).
    records = sorted((results_dir / "sweeps" / "overlap").glob("*/multirun.yaml"))
    assert len(records) == 2
    swept = [list(OmegaConf.load(record).hydra.overrides.task) for record in records]
    assert sorted(("optimizer.lr=1e-3,3e-3" in task, "seed=0,1" in task) for task in swept) == [
        (False, True),
        (True, False),
    ]

    # A store that already holds a copy (made before runs were found by identity) counts it once and says so.
    original = next(d for d in run_dirs if "lr3e-3" in d.name and "-s0-" in d.name)
    copy = original.with_name(original.name.replace("-lr3e-3", ""))
    shutil.copytree(original, copy)
    runs = load_experiment(results_dir, "overlap")
    assert sorted(r.name for r in runs) == [d.name for d in run_dirs]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(original) in warnings[0] and str(copy) in warnings[0], warnings
