"""Sweeps end to end: a grid via Hydra multirun, re-running skips finished runs, a diverging arm is a
result, and the report reads the store the sweep wrote."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert [name.rsplit("-", 1)[0] for name in names] == ["adamw-nanogpt_char_cpu-lr10-s1337", "adamw-nanogpt_char_cpu-lr1e-3-s1337"]

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
