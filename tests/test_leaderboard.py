"""The cross-reproduction leaderboard: AlgoPerf's profile integral and the speedup over AdamW, on known inputs."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from soapbench.report.leaderboard import read_entries, score

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [
    "arm",
    "optimizer",
    "workload",
    "steps_to_target",
    "seconds_to_target",
    "verdict_vs_baseline",
    "wallclock_unreliable",
]


def _report(root: Path, name: str, rows: list[tuple]) -> Path:
    path = root / name / "report.csv"
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for arm, optimizer, steps, seconds, verdict, unreliable in rows:
            writer.writerow([arm, optimizer, f"{name}:w", steps, seconds, verdict, unreliable])
    return path


def _suite(root: Path) -> list[Path]:
    return [
        # workload a: soap reaches the target in half adamw's steps but is slower per step; shampoo is last
        _report(
            root,
            "a",
            [
                ("adamw", "adamw", 1000, 100, "baseline", ""),
                ("soap f=10", "soap", 500, 120, "better", ""),
                ("soap f=1", "soap", 400, 300, "better", "machine shared"),
                ("shampoo f=10", "shampoo", 4000, 400, "worse", ""),
            ],
        ),
        # workload b: soap 2x faster in both; shampoo tied with adamw and short of the target: not scored
        _report(
            root,
            "b",
            [
                ("adamw", "adamw", 800, 80, "baseline", ""),
                ("soap f=10", "soap", 400, 40, "better", ""),
                ("shampoo f=10", "shampoo", "", "", "inconclusive", ""),
            ],
        ),
        # workload c: a claim outside its regime scores nothing
        _report(
            root, "c", [("adamw", "adamw", 100, 10, "baseline", ""), ("soap f=10", "soap", 50, 5, "not tested", "")]
        ),
    ]


def test_profile_integral_and_speedup_follow_algoperfs_definitions(tmp_path: Path) -> None:
    scores = {s.family: s for s in score(read_entries(_suite(tmp_path)))}
    soap, adamw, shampoo = scores["soap"], scores["adamw"], scores["shampoo"]
    # by steps soap is fastest on a (f=1, 400) and b: ratio 1 -> profile 1; adamw is 2.5x and 2x behind
    assert soap.profile_steps == 1.0 and soap.arms_steps[0].startswith("soap f=1 ")
    assert adamw.profile_steps == pytest.approx(((4 - 2.5) / 3 + (4 - 2) / 3 + 1) / 3)  # c: adamw alone is fastest
    # by time soap f=10 (120 s) represents soap on a, and adamw (100 s) is fastest there
    assert soap.arms_seconds[0].startswith("soap f=10 ") and soap.profile_seconds == pytest.approx(
        ((4 - 1.2) / 3 + 1) / 2
    )
    assert soap.speedup_steps == pytest.approx(math.sqrt(2.5 * 2)) and soap.speedup_seconds == pytest.approx(
        math.sqrt(100 / 120 * 2)
    )
    assert soap.workloads == ["a:w", "b:w"] and "soap f=10 (c:w: not tested)" in soap.unscored
    # shampoo: 4000/400 steps is beyond tau_max = 4 -> 0; its undetermined not-reached on b is not scored as inf
    assert shampoo.profile_steps == 0.0 and shampoo.workloads == ["a:w"]
    assert any("target not reached" in text for text in shampoo.unscored)
    assert shampoo.rank_steps is None  # one workload: scored, not ranked
    assert (soap.rank_steps, adamw.rank_steps) == (1, 2)
    assert soap.unreliable_time == 0  # soap f=1's shared-machine time is not the one soap's time score uses


def test_the_command_writes_the_table_and_refuses_a_users_folder(tmp_path: Path) -> None:
    _suite(tmp_path / "repro")
    command = [sys.executable, str(REPO / "scripts" / "leaderboard.py"), "--reproductions-dir", "repro"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| soap | 1.000 |" in result.stdout and (tmp_path / "results/leaderboard/leaderboard.csv").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("keep")
    refused = subprocess.run([*command, "--out", "mine"], cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith(
        "leaderboard: error: --out mine is not empty and no leaderboard wrote it"
    )
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.md"]
    empty = subprocess.run(
        [*command[:2], "--reproductions-dir", "nowhere"], cwd=tmp_path, capture_output=True, text=True
    )
    assert empty.returncode == 2 and "no */report.csv under nowhere" in empty.stderr
