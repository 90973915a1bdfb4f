"""Search beyond grids: spaces, quasi-random points, the objective, and a study that resumes after a kill."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("optuna")

from soapbench.errors import ConfigError  # noqa: E402
from soapbench.search.driver import load_search, objective, run_search  # noqa: E402
from soapbench.search.space import _radical_inverse, parse_space, quasi_random_point  # noqa: E402
from tests.conftest import FAST, REPO, train_in_process  # noqa: E402

SPACE = {
    "optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "optimizer.betas": [{"low": 0.8, "high": 0.99, "log": True, "one_minus": True}, 0.95],
}


def test_radical_inverse_is_the_van_der_corput_sequence() -> None:
    assert [_radical_inverse(i, 2) for i in range(1, 8)] == [0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]
    assert [_radical_inverse(i, 3) for i in range(1, 4)] == pytest.approx([1 / 3, 2 / 3, 1 / 9])


@pytest.mark.parametrize("kind", ["halton", "sobol"])
def test_quasi_random_points_fill_the_space_more_evenly_than_chance(kind: str) -> None:
    points = [quasi_random_point(i, 2, kind, seed=0) for i in range(16)]
    assert all(0.0 <= u < 1.0 for point in points for u in point)
    for dim in range(2):  # 16 points, 16 bins: a low-discrepancy sequence leaves at most 2 empty (chance: ~6)
        bins = {int(point[dim] * 16) for point in points}
        assert len(bins) >= 14, (kind, dim, sorted(bins))
    assert points == [quasi_random_point(i, 2, kind, seed=0) for i in range(16)], "deterministic given the seed"
    assert points != [quasi_random_point(i, 2, kind, seed=1) for i in range(16)]


def test_space_maps_points_to_log_ranges_one_minus_betas_and_overrides() -> None:
    space = parse_space(SPACE)
    assert [d.param_name for d in space.dimensions] == ["optimizer.lr", "1-optimizer.betas.0"]
    for index in range(8):
        values = space.config_values(space.quasi_random_params(index, "halton", seed=0))
        assert 1e-4 <= values["optimizer.lr"] <= 1e-1 and 0.8 <= values["optimizer.betas.0"] <= 0.99
    overrides = space.overrides({"optimizer.lr": 0.003, "1-optimizer.betas.0": 0.1})
    assert overrides == ["optimizer.lr=0.003", "optimizer.betas=[0.9,0.95]"]


@pytest.mark.parametrize(
    "space,message",
    [
        ({"optimizer.lr": {"low": 1e-2, "high": 1e-3}}, "need numbers low < high"),
        ({"optimizer.lr": {"low": 0.0, "high": 1e-3, "log": True}}, "a log range must be positive"),
        ({"optimizer.lr": {"low": 1e-4, "hi": 1e-3}}, "optimizer.lr.hi: unknown range key"),
        ({"optimizer.betas": [{"low": 0.9, "high": 1.0, "one_minus": True}]}, "high must be < 1"),
        ({"optimizer.lr": 0.1}, "give a range"),
    ],
)
def test_bad_space_names_the_key(space, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(space)


def test_objective_is_the_final_val_loss_and_divergence_scores_infinity() -> None:
    assert objective({"status": "completed", "final_val_loss": 1.5}) == 1.5
    assert objective({"status": "completed", "final_val_loss": 1.5, "final_full_val_loss": 1.4}) == 1.4, "whole split"
    assert objective({"status": "diverged", "final_val_loss": 1.2}) == math.inf, "not its last finite loss"
    assert objective({"status": "completed", "final_val_loss": float("nan")}) == math.inf
    assert objective({"status": "failed", "final_val_loss": None}) is None
    assert objective(None) is None


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_continued_study_draws_new_points_instead_of_replaying_the_first_sessions(sampler, tmp_path) -> None:
    """Each driver session builds a new sampler; seeded by the seed alone it would replay the first session's
    random draws, and every trial after a restart would repeat an earlier one."""
    from soapbench.search.driver import open_study

    search = load_search(_search_yaml(tmp_path, 2, 2), overrides=[], trials=None, sampler=sampler, study=None, jobs=1,
                         results_dir=tmp_path)  # fmt: skip
    drawn = []
    for _session in range(3):
        study = open_study(search)
        trial = study.ask(search.space.distributions())
        study.tell(trial, 1.0)
        drawn.append(trial.params["optimizer.lr"])
    assert len(set(drawn)) == 3, drawn
    again = load_search(_search_yaml(tmp_path, 2, 2), overrides=[], trials=None, sampler=sampler, study="fresh", jobs=1,
                        results_dir=tmp_path)  # fmt: skip
    assert open_study(again).ask(again.space.distributions()).params["optimizer.lr"] == drawn[0], "reproducible"


def _search_yaml(tmp_path, steps: int, checkpoint: int) -> str:
    path = tmp_path / "tiny_search.yaml"
    overrides = [
        o
        for o in FAST
        if not o.startswith(("trainer.max_steps", "trainer.checkpoint_interval", "trainer.eval_interval"))
    ]
    path.write_text(
        "study: tiny\nsampler: halton\ntrials: 2\nseed: 0\noverrides:\n"
        + "".join(f"  - {o}\n" for o in [*overrides, "optimizer=adamw", f"trainer.max_steps={steps}",
                                          f"trainer.checkpoint_interval={checkpoint}", f"trainer.eval_interval={steps}"])
        + "space:\n  optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )  # fmt: skip
    return str(path)


def _driver(yaml: str, results_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "search.py"), yaml, "--results-dir", str(results_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_a_killed_search_resumes_its_interrupted_trial_from_the_checkpoint(results_dir, tmp_path) -> None:
    """SIGKILL the driver mid-trial: the rerun retries that trial on its run directory, which resumes from its last
    checkpoint and ends exactly as the same trial run uninterrupted; the study then finishes its trials."""
    yaml = _search_yaml(tmp_path, steps=600, checkpoint=50)
    first = _driver(yaml, results_dir)
    runs = results_dir / "runs" / "tiny"
    deadline = time.time() + 240
    while not any(runs.glob("*/checkpoint.pt")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)  # the trial process dies with it (PR_SET_PDEATHSIG)
    first.communicate()
    (interrupted,) = runs.glob("*/checkpoint.pt")
    assert '"status": "running"' in (interrupted.parent / "summary.json").read_text(), "killed mid-run"

    second = _driver(yaml, results_dir)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert "trials [0] were interrupted; their runs resume" in output
    with open(results_dir / "searches" / "tiny" / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["trial"], r["state"], r["retry_of"]) for r in rows] == [("0", "fail", ""), ("1", "complete", "0"),
                                                                       ("2", "complete", "")]  # fmt: skip
    assert rows[1]["run_name"] == interrupted.parent.name
    assert "resuming from step" in (results_dir / "searches" / "tiny" / "trial_0001.log").read_text()

    search = load_search(
        yaml, overrides=[], trials=None, sampler=None, study=None, jobs=1, results_dir=tmp_path / "ref"
    )
    uninterrupted = train_in_process(search.trial_overrides({"optimizer.lr": float(rows[1]["optimizer.lr"])}), tmp_path)
    assert float(rows[1]["objective"]) == objective(uninterrupted)
    assert rows[1]["run_name"] == uninterrupted["run_name"], "trials are named by their swept values"
    assert "-lr" in rows[1]["run_name"]


def test_a_study_refuses_other_overrides_and_bad_searches_are_one_line(results_dir, tmp_path) -> None:
    yaml = _search_yaml(tmp_path, steps=2, checkpoint=2)
    search = load_search(yaml, overrides=[], trials=1, sampler=None, study=None, jobs=1, results_dir=results_dir)
    run_search(search, print_line=lambda _: None)
    changed = load_search(yaml, overrides=["trainer.max_steps=3"], trials=1, sampler=None, study=None, jobs=1,
                          results_dir=results_dir)  # fmt: skip
    with pytest.raises(ConfigError, match="study 'tiny' was started with other overrides"):
        run_search(changed, print_line=lambda _: None)

    result = subprocess.run([sys.executable, str(REPO / "scripts" / "search.py"), "no_such_search"], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: search: no search 'no_such_search'") and "soap_lr_betas" in line
