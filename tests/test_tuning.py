"""Tuned, seeded reproductions: the tuning protocol, the report's statistics and verdicts, interruption.

The protocol is checked on synthetic results (no training); one tiny reproduction runs end to end
through ``scripts/reproduce.py`` (2 lr points x 2 seeds, 12 steps), interrupted once and resumed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import synthetic_runs as syn
from conftest import FAST, REPO

from soapbench.report.analysis import analyze
from soapbench.report.render import markdown
from soapbench.report.stats import estimate, judge, paired_test
from soapbench.report.store import load_experiment
from soapbench.tuning import Arm, Design, Planner, log_grid, run_design, train_command


def _drive(planner: Planner, final_of) -> list:
    """Run a planner to the end with a synthetic final loss per (arm, lr, seed); return every job run."""
    queue, ran = list(planner.initial()), []
    while queue:
        job = queue.pop(0)
        ran.append(job)
        queue += planner.finished(job, final_of(job))
    return ran


def test_grid_is_centred_on_the_yaml_lr_a_half_decade_apart() -> None:
    assert log_grid(1e-3, 3, math.sqrt(10)) == [3.16e-4, 1e-3, 3.16e-3]
    assert log_grid(3e-3, 2, math.sqrt(10)) == [9.49e-4, 3e-3]


def test_planner_brackets_each_optimum_seeds_the_best_on_report_seeds_and_lends_it_to_siblings() -> None:
    design = Design("exp", (Arm("adamw"), Arm("soap_f10"), Arm("soap_f1", tune_from="soap_f10")), seeds=3)
    planner = Planner(design, {"adamw": 1e-3, "soap_f10": 3e-3, "soap_f1": 3e-3})
    # adamw's optimum is two half-decades above its grid (extended twice, then interior); soap_f10's is inside
    best = {"adamw": 3.16e-2, "soap_f10": 3e-3, "soap_f1": 3e-3}
    ran = _drive(planner, lambda j: abs(math.log10(j.lr / best[j.arm])))
    adamw = planner.logs["adamw"]
    assert adamw.grid == [3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1] and adamw.extensions == 3
    assert adamw.best_lr == 3.16e-2 and not adamw.still_on_edge and adamw.flags == []
    soap = planner.logs["soap_f10"]
    assert soap.extensions == 0 and soap.best_lr == 3e-3 and not soap.still_on_edge
    sibling = planner.logs["soap_f1"]
    assert sibling.tuned_from == "soap_f10" and sibling.tuning == "borrowed" and sibling.best_lr == 3e-3
    assert sibling.flags == ["not tuned: takes soap_f10's tuned lr"]
    report = {(j.arm, j.seed) for j in ran if j.role == "report"}
    assert report == {(arm, seed) for arm in ("adamw", "soap_f10", "soap_f1") for seed in (1, 2, 3)}
    assert all(j.lr == 3.16e-2 for j in ran if j.arm == "adamw" and j.role == "report")
    assert len(ran) == 6 + 3 + 3 * 3  # adamw grid + 3 extensions, soap grid, 3 report seeds for each arm


def test_an_edge_optimum_is_extended_up_to_the_cap_and_then_flagged() -> None:
    planner = Planner(
        Design("exp", (Arm("adamw"), Arm("soap_f10")), seeds=2, max_extensions=3), {"adamw": 1e-3, "soap_f10": 3e-3}
    )
    ran = _drive(planner, lambda j: math.log10(j.lr) if j.arm == "adamw" else abs(math.log10(j.lr / 3e-3)))
    adamw = planner.logs["adamw"]
    assert [j.lr for j in ran if j.arm == "adamw" and j.stage == "edge"] == [1e-4, 3.16e-5, 1e-5]
    assert adamw.extensions == 3 and adamw.extended == "down" and adamw.best_lr == 1e-5 and adamw.still_on_edge
    assert adamw.flags and "lower edge after 3 extensions (the cap)" in adamw.flags[0]
    record = planner.tuning_record()
    assert record["arms"]["adamw"]["still_on_edge"] and not record["arms"]["soap_f10"]["still_on_edge"]
    assert record["protocol"]["max_extensions"] == 3
    # the same rule for every arm: both started from 3 points, and both could have been extended 3 times
    assert len(planner.logs["soap_f10"].grid) == 3 and len(adamw.grid) == 3 + 3


def test_a_tuning_seed_is_never_a_report_seed_and_every_run_says_which_it_is() -> None:
    design = Design("exp", (Arm("adamw"), Arm("soap_f10"), Arm("soap_f1", tune_from="soap_f10")), seeds=5, tune_seeds=2)
    planner = Planner(design, {"adamw": 1e-3, "soap_f10": 3e-3, "soap_f1": 3e-3}, base_seed=0)
    # tuning-seed noise that flatters lr 1e-3 on seed 0: it may pick the lr, never enter the reported mean
    ran = _drive(planner, lambda j: abs(math.log10(j.lr / 1e-3)) - (0.5 if j.seed == 0 else 0.0))
    tune = {j.seed for j in ran if j.role == "tune"}
    report = {j.seed for j in ran if j.role == "report"}
    assert tune == {0, 1} and report == {2, 3, 4, 5, 6} and not tune & report
    assert {j.stage for j in ran if j.role == "tune"} == {"grid", "edge"}  # soap_f10's best (9.49e-4) was on an edge
    assert {j.arm for j in ran if j.role == "tune"} == {"adamw", "soap_f10"}  # the borrower is never tuned
    record = planner.tuning_record()
    assert record["protocol"]["tune_seeds"] == [0, 1] and record["protocol"]["report_seeds"] == [2, 3, 4, 5, 6]
    assert sorted((r["arm"], r["lr"], r["seed"], r["role"]) for r in record["runs"]) == sorted(
        (j.arm, j.lr, j.seed, j.role) for j in ran
    )
    assert record["arms"]["adamw"]["seeds"] == [2, 3, 4, 5, 6] and record["arms"]["adamw"]["tune_seeds"] == [0, 1]
    # the score of an lr is its mean over the tuning seeds
    assert record["arms"]["adamw"]["results"][repr(1e-3)] == pytest.approx(-0.25)
    json.dumps(record)  # the report reads it back


def test_a_design_with_budgets_tunes_at_the_full_one_and_runs_the_best_lr_at_every_budget_on_report_seeds() -> None:
    """The SOAP paper's efficiency protocol under the tuning rules: shortened schedules only for the chosen lr,
    each on the report seeds (the fit's points never include a tuning seed); a borrower gets the same family."""
    design = Design(
        "exp",
        (Arm("adamw", 1.0), Arm("soap_f10", 2.0), Arm("soap_f1", 3.0, tune_from="soap_f10")),
        seeds=2,
        budgets=(0.5, 0.75, 1.0),
        full_steps=200,
    )
    planner = Planner(design, {"adamw": 1e-3, "soap_f10": 3e-3, "soap_f1": 3e-3})
    ran = _drive(planner, lambda j: abs(math.log10(j.lr / (1e-3 if j.arm == "adamw" else 3e-3))))
    assert {j.max_steps for j in ran if j.role == "tune"} == {None}  # tuning at the preset's full budget
    report = sorted((j.arm, j.seed, j.max_steps or 200) for j in ran if j.role == "report")
    assert report == sorted(
        (arm, seed, steps) for arm in ("adamw", "soap_f10", "soap_f1") for seed in (1, 2) for steps in (100, 150, 200)
    )
    short = next(j for j in ran if j.arm == "soap_f10" and j.max_steps == 100)
    assert short.lr == 3e-3 and short.cost == 1.0  # half the budget, half the cost (for scheduling and estimates)
    assert short.with_extra([])[-1] == "trainer.max_steps=100"
    assert "sweep_keys=['variant=soap_f10',optimizer.lr,trainer.max_steps]" in short.overrides()  # its own run name
    # a user's `-- trainer.max_steps=12` sets the full budget; it must not turn a shortened run into a full one
    # (it once did: the shortened runs became copies of the full ones)
    command = train_command(REPO, "exp", "results", short, ["trainer.max_steps=12"], ["trainer.threads=1"])
    assert [o for o in command if o.startswith("trainer.max_steps=")] == [
        "trainer.max_steps=12",
        "trainer.max_steps=100",
    ]
    full = next(j for j in ran if j.arm == "soap_f10" and j.role == "report" and j.max_steps is None)
    assert not any(o.startswith("trainer.max_steps") for o in full.with_extra([]))  # the same run as without budgets
    record = planner.tuning_record()
    assert record["protocol"]["budgets"] == [0.5, 0.75, 1.0] and record["protocol"]["full_steps"] == 200
    assert sorted(r.get("max_steps", 200) for r in record["runs"] if r["arm"] == "adamw" and r["role"] == "report") == [
        100,
        100,
        150,
        150,
        200,
        200,
    ]
    json.dumps(record)


@pytest.mark.parametrize(
    "budgets, full_steps, message",
    [
        ((0.5, 0.75), 200, "including 1.0"),
        ((0.5, 1.0, 1.0), 200, "distinct"),
        ((0.0, 1.0), 200, "in (0, 1]"),
        ((0.5, 1.0), None, "needs the preset's trainer.max_steps"),
        ((0.001, 1.0), 200, "rounds to 0 steps"),
    ],
)
def test_a_design_refuses_budgets_it_cannot_run(budgets, full_steps, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Design("exp", (Arm("adamw"),), budgets=budgets, full_steps=full_steps)


def test_an_lr_with_a_failed_tuning_seed_is_not_ranked() -> None:
    planner = Planner(Design("exp", (Arm("adamw"),), seeds=1, tune_seeds=2), {"adamw": 1e-3})
    _drive(planner, lambda j: None if (j.lr == 1e-3 and j.seed == 1) else abs(math.log10(j.lr / 1e-3)))
    assert planner.logs["adamw"].results[repr(1e-3)] is None and planner.logs["adamw"].best_lr != 1e-3


def test_simulated_schedule_counts_runs_and_wall_time() -> None:
    from soapbench.tuning import simulate

    design = Design("exp", (Arm("adamw", 1.0), Arm("soap_f10", 2.0)), seeds=2, points=3)
    runs, wall, busy = simulate(
        Planner(design, {"adamw": 1e-3, "soap_f10": 3e-3}),
        lambda j: abs(math.log10(j.lr / (1e-3 if j.arm == "adamw" else 3e-3))),
        lambda j: 10.0 * j.cost,
        2,
    )
    assert runs == 3 + 3 + 2 + 2 and busy == 10.0 * (5 * 1 + 5 * 2)
    assert busy / 2 <= wall < busy  # two at a time


def test_planner_does_not_seed_an_arm_whose_every_lr_diverged() -> None:
    planner = Planner(Design("exp", (Arm("muon"),), seeds=3), {"muon": 0.02})
    ran = _drive(planner, lambda j: math.inf)
    assert planner.logs["muon"].best_lr is None and ran and all(j.stage in ("grid", "edge") for j in ran)


def _seeds(values):
    return {str(i): v for i, v in enumerate(values)}


def test_interval_and_paired_verdicts() -> None:
    est = estimate([1.0, 1.1, 1.2])
    assert est.n == 3 and est.std == pytest.approx(0.1) and est.half_width == pytest.approx(4.302653 * 0.1 / 3**0.5)
    assert estimate([1.5]).n == 1 and math.isnan(estimate([1.5]).half_width)

    def verdict(this, base):
        test = paired_test(_seeds(this), _seeds(base))
        return judge(test, test.p_value, None).verdict

    assert verdict([1.0, 1.01, 0.99], [2.0, 2.02, 1.99]) == "better"
    assert verdict([1.0, 1.5, 0.5], [1.1, 0.6, 1.6]) == "inconclusive"
    assert verdict([1.0], [2.0, 2.1]) == "inconclusive"  # one paired seed: no test


def _evals(final: float, seconds_per_step: float) -> list[tuple[int, float, float]]:
    return [(step, step * seconds_per_step, final + 1.0 / step * 50) for step in (100, 200, 300, 400)]


def test_report_marks_wall_clock_from_a_shared_machine_and_mixed_segments(tmp_path: Path) -> None:
    root = tmp_path / "results"
    shared = {
        "machine_shared": {
            "shared": True,
            "slowed_fraction": 0.31,
            "max_load": 3.8,
            "cores": 2,
            "reasons": ["31% of steps slowed >1.5x (wall/CPU)"],
        },
        "segments_differ": True,
        "segments": [
            {"start_step": 0, "end_step": 200, "threads": 1},
            {"start_step": 200, "end_step": 400, "threads": 2},
        ],
    }
    for seed in (0, 1, 2):
        syn.write_run(
            root,
            "exp",
            f"adamw-s{seed}",
            syn.base_config("exp", "adamw", seed, 1e-3, 400),
            _evals(1.50 + 0.01 * seed, 0.1),
        )
        syn.write_run(
            root,
            "exp",
            f"soap-s{seed}",
            syn.base_config("exp", "soap", seed, 3e-3, 400),
            _evals(1.40 + 0.01 * seed, 0.3),
            summary_extra=shared if seed == 1 else None,
        )
    analysis = analyze(load_experiment(root, "exp"))
    report, table = markdown(analysis, "cmd", "now", None, [])
    assert "machine shared: 31% of steps slowed >1.5×" in table
    assert "(unreliable: machine shared)" in table.split("| soap |")[1].split("\n")[0]
    assert "(unreliable" not in table.split("| adamw |")[1].split("\n")[0]  # clean runs print plain numbers
    assert "resumed on a different device, CPU or thread count" in table
    soap = analysis.workloads[0].optimizers["soap"]
    assert soap.versus_baseline.verdict == "better" and soap.best.n == 3


def test_report_prints_small_losses_with_four_significant_digits(tmp_path: Path) -> None:
    """A colorization MSE of ~0.004 printed with 4 decimals showed two digits: 0.0041 ± 0.0002, gaps unreadable."""
    from soapbench.report.stats import decimals_for

    assert (decimals_for([1.7302, 1.69]), decimals_for([0.004123, 0.0039]), decimals_for([])) == (4, 6, 4)
    root = tmp_path / "results"
    for seed in (0, 1, 2):
        mse = [(step, step * 0.1, 0.004 + 1e-5 * seed + 0.02 / step) for step in (100, 200, 300, 400)]
        syn.write_run(root, "exp", f"adamw-s{seed}", syn.base_config("exp", "adamw", seed, 1e-3, 400), mse)
        better = [(step, seconds, value - 3e-4) for step, seconds, value in mse]
        syn.write_run(root, "exp", f"soap-s{seed}", syn.base_config("exp", "soap", seed, 3e-3, 400), better)
    analysis = analyze(load_experiment(root, "exp"))
    report, table = markdown(analysis, "cmd", "now", None, [])
    soap_row = table.split("| soap |")[1].split("\n")[0]
    assert "0.003760 ± 0.000010 [0.003735, 0.003785] (n=3)" in soap_row, soap_row
    assert "Δ -0.000300" in soap_row


def test_loss_curves_spanning_decades_get_a_log_axis_and_say_so(tmp_path: Path) -> None:
    from soapbench.report.figures import loss_curves

    root = tmp_path / "results"
    captions = []
    for experiment, scale in (("mse", 2.0), ("lm", 0.02)):
        for seed in (0, 1):
            evals = [
                (step, step * 0.1, 1.0 * (experiment == "lm") + 0.004 + scale / step) for step in (10, 100, 200, 400)
            ]
            syn.write_run(
                root, experiment, f"adamw-s{seed}", syn.base_config(experiment, "adamw", seed, 1e-3, 400), evals
            )
        workload = analyze(load_experiment(root, experiment)).workloads[0]
        (tmp_path / experiment).mkdir()
        captions.append(loss_curves(workload, "val/loss", tmp_path / experiment, "loss_curves").caption)
    assert "log y-axis" in captions[0] and "log y-axis" not in captions[1]


def test_report_lists_confounds_between_arms(tmp_path: Path) -> None:
    root = tmp_path / "results"
    for seed in (0, 1):
        base = syn.base_config("exp", "muon", seed, 0.02, 400, companion={"name": "adamw", "lr": 3e-4})
        other = syn.base_config("exp", "soap_muon", seed, 0.02, 400, companion={"name": "adamw", "lr": 4e-3})
        syn.write_run(root, "exp", f"muon-s{seed}", base, _evals(1.71 + 0.001 * seed, 0.1))
        syn.write_run(root, "exp", f"soap_muon-s{seed}", other, _evals(1.70 + 0.001 * seed, 0.1))
    analysis = analyze(load_experiment(root, "exp"), baseline="muon")
    report, table = markdown(analysis, "cmd", "now", None, [])
    assert "confound: differs from the baseline arm muon in non-optimizer settings (optimizer.companion.lr)" in table
    assert "**optimizer.companion.lr: 0.004 (baseline 0.0003); companion lr: 0.004 (baseline 0.0003)" in report
    # the confound is printed beside the verdict too, not only in the warnings
    assert "⚠ confounded: companion lr" in table.split("| soap_muon |")[1].split("\n")[0]


def _load_reproduce():
    from soapbench import reproduction

    return reproduction


_TINY = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import soapbench.reproduction as m
m.REPRODUCTIONS["tiny"] = m.Reproduction(
    "tiny", {{"cpu": "whitening_nanogpt_cpu"}}, "whitening_nanogpt", {{"cpu": 5.0}},
    arms=(m.Arm("adamw"), m.Arm("soap_f10", 2.0), m.Arm("soap_f1", 3.0, tune_from="soap_f10")), seeds=2, points=2,
    max_extensions=1, decay_per_step=1e-4)
sys.exit(m.main(sys.argv[1:]))
"""


def test_tiny_tuned_reproduction_end_to_end_interrupted_and_resumed(tmp_path: Path) -> None:
    fast = [o for o in FAST if not o.startswith("model=")]
    results = tmp_path / "results"
    command = [sys.executable, "-c", _TINY, "tiny", "--results-dir", str(results), "--jobs", "2", "--", *fast]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((results / "sweeps").rglob("*.log")):
        time.sleep(0.2)
    time.sleep(3)  # the first jobs are running
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, (out, err)
    assert "interrupted (SIGINT)" in err and "The same command resumes" in err and "Traceback" not in err

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "reused from the store" in rerun.stdout
    run_dirs = [d for d in (results / "runs" / "whitening_nanogpt_cpu").iterdir() if d.is_dir()]
    # 2 lrs + 1 edge point per tuned arm on tuning seed 0, then 2 report seeds (1, 2) for each of the three arms:
    # nothing ran twice
    assert len(run_dirs) == 3 + 3 + 3 * 2
    report = (results / "reports" / "whitening_nanogpt_cpu" / "report.md").read_text()
    for arm in ("| adamw |", "| soap f=10 |", "| soap f=1 |"):
        assert arm in report, arm
    assert "(n=2)" in report and "] (n=2)" in report  # mean ± std [95% CI] (n)
    assert "at the edge of the values tried" in report and "the grid was extended 1 time(s)" in report
    assert "takes `soap_f10`'s tuned lr" in report
    assert "Paper claims, checked against our seeds where the run meets the claim's regime" in report
    verdicts = [line for line in report.splitlines() if line.startswith("- [paper] ")]
    # a tiny CPU run is outside every claim's regime: nothing is judged, all is reported as measured
    assert len(verdicts) == 6 and all("**not tested**: " in line for line in verdicts)
    assert "tokens seen, the claim is about ≥ 40M" in report
    assert any(w in report for w in ("**equivalent**", "**better**", "**worse**", "**inconclusive**"))
    for name in ("per_seed.csv", "comparisons.csv", "claims.csv"):
        assert (results / "reports" / "whitening_nanogpt_cpu" / name).stat().st_size > 0, name
    tuning = json.loads((results / "runs" / "whitening_nanogpt_cpu" / "tuning.json").read_text())
    assert tuning["arms"]["soap_f1"]["tuned_from"] == "soap_f10" and tuning["arms"]["soap_f1"]["tuning"] == "borrowed"
    roles = {(run["arm"], run["seed"]): run["role"] for run in tuning["runs"]}
    assert {seed for (_, seed), role in roles.items() if role == "report"} == {1, 2}
    assert {seed for (_, seed), role in roles.items() if role == "tune"} == {0}
    csv = pd.read_csv(results / "reports" / "whitening_nanogpt_cpu" / "report.csv")
    assert set(csv["arm"]) == {"adamw", "soap f=10", "soap f=1"} and csv["final_std"].notna().all()
    # every mean is over the report seeds alone, and per_seed.csv says which run tuned, as tuning.json does
    assert (csv["n_seeds"] == 2).all() and csv.loc[csv["arm"] == "soap f=1", "tuning_flags"].item().startswith(
        "not tuned"
    )
    per_seed = pd.read_csv(results / "reports" / "whitening_nanogpt_cpu" / "per_seed.csv")
    tune_seeds = set(per_seed.loc[per_seed["role"] == "tune", "seed"])
    assert tune_seeds == {0} and set(per_seed.loc[per_seed["role"] == "report", "seed"]) == {1, 2}
    assert not tune_seeds & set(per_seed.loc[per_seed["role"] == "report", "seed"])
    assert len(per_seed) == len(tuning["runs"]) == len(run_dirs)
    borrowed = next(line for line in report.splitlines() if line.startswith("| soap f=1 |"))
    assert "⚠ not tuned: takes soap_f10's tuned lr" in borrowed


def test_the_best_lr_is_chosen_on_the_seeds_every_lr_ran_not_on_one_lucky_seed(tmp_path: Path) -> None:
    # the tuning ran lr 1e-3 and 3e-3 on seed 0 and seeded the winner (3e-3); its 3-seed mean is worse than
    # 1e-3's single seed, but on seed 0 (what both ran) 3e-3 won, so it stays the best configuration
    root = tmp_path / "results"
    syn.write_run(root, "exp", "lo-s0", syn.base_config("exp", "adamw", 0, 1e-3, 400), _evals(1.520, 0.1))
    for seed, final in ((0, 1.510), (1, 1.530), (2, 1.540)):
        syn.write_run(root, "exp", f"hi-s{seed}", syn.base_config("exp", "adamw", seed, 3e-3, 400), _evals(final, 0.1))
    best = analyze(load_experiment(root, "exp")).workloads[0].optimizers["adamw"].best
    assert best.value("optimizer.lr") == 3e-3 and best.n == 3


def test_a_finished_design_is_read_back_from_the_store_without_launching_anything(tmp_path: Path) -> None:
    from soapbench.tuning import run_design

    design = Design("exp", (Arm("adamw"), Arm("soap_f10"), Arm("soap_f1", tune_from="soap_f10")), seeds=3)
    stored = lambda job: abs(math.log10(job.lr / 3e-3)) + 0.01 * job.seed  # noqa: E731 - every run is in the store
    launched = []
    counts = run_design(
        Planner(design, {"adamw": 1e-3, "soap_f10": 3e-3, "soap_f1": 3e-3}),
        lambda job, log, slot: launched.append(job),
        stored,
        stored,
        2,
        tmp_path,
        say=lambda _: None,
    )
    assert launched == [] and counts["ran"] == 0
    assert (
        counts["reused"] == 4 + 3 + 3 * 3
    )  # grids (adamw extended once), every arm's report seeds: all from the store


class _Exited:
    """A job process that has already exited with ``code``."""

    def __init__(self, code: int) -> None:
        self.returncode = code

    def poll(self) -> int:
        return self.returncode


def test_a_run_another_process_trains_is_waited_for_not_failed_nor_dropped(tmp_path: Path, monkeypatch) -> None:
    import soapbench.tuning as tuning

    monkeypatch.setattr(tuning, "BUSY_RETRY_SECONDS", 0.3, raising=False)
    design = Design("exp", (Arm("adamw"),), seeds=1, points=3)
    final = lambda job: abs(math.log10(job.lr / 1e-3))  # noqa: E731 - the centre lr wins: no edge point
    store: dict = {}
    holder_done_at: list[float] = []

    def launch(job, log, slot):
        if job.lr == 1e-3 and not holder_done_at:  # a job of a killed driver still trains it, for a moment
            holder_done_at.append(time.monotonic() + 0.5)
            return _Exited(3)
        store[job] = final(job)
        return _Exited(0)

    def stored(job):
        if job.lr == 1e-3 and holder_done_at and time.monotonic() >= holder_done_at[0]:
            return final(job)  # the holder finished and wrote its result
        return store.get(job, False)

    said: list[str] = []
    planner = Planner(design, {"adamw": 1e-3})
    counts = run_design(
        planner,
        launch,
        lambda job: stored(job) if stored(job) is not False else None,
        stored,
        2,
        tmp_path,
        say=said.append,
    )
    assert counts["failed"] == 0, said
    assert any(line.startswith("[busy ] adamw lr=0.001") for line in said), said
    assert planner.logs["adamw"].results["0.001"] == 0.0 and planner.logs["adamw"].best_lr == 1e-3


def holder_gone(lock: Path) -> bool:
    """True when no live process holds the run's lock (a dead holder's lock goes with it)."""
    import fcntl

    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def test_jobs_of_a_driver_killed_outright_stop_with_it(tmp_path: Path) -> None:
    fast = [o for o in FAST if not o.startswith("model=")]
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-c",
        _TINY,
        "tiny",
        "--results-dir",
        str(results),
        "--jobs",
        "2",
        "--",
        *fast,
        "trainer.max_steps=5000",
        "trainer.eval_interval=5000",
        "trainer.checkpoint_interval=5000",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    locks = lambda: list((results / "runs").glob("*/*/.lock"))  # noqa: E731
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not [p for p in locks() if p.read_text().strip()]:
        time.sleep(0.2)
    try:
        assert [p for p in locks() if p.read_text().strip()], "no job started"
        driver.kill()  # SIGKILL: the driver runs no handler
        driver.wait()
        held = [p for p in locks() if p.read_text().strip()]

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(holder_gone(lock) for lock in held):
            time.sleep(0.2)
        assert all(holder_gone(lock) for lock in held), "a job trains on after its driver was killed"
        for lock in held:  # stopped as by SIGTERM: resumable, never a failed result
            summary = lock.parent / "summary.json"
            assert not summary.exists() or json.loads(summary.read_text())["status"] != "failed"
    finally:
        driver.kill()
        for lock in [lock for lock in locks() if not holder_gone(lock)]:  # on failure, leave no job behind
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(lock.read_text()), signal.SIGKILL)


@pytest.mark.parametrize(
    "override, message",
    [
        ("foo=1", "foo: unknown key"),
        ("model=nonexistent", "model=nonexistent: no such model config"),
        ("seed=-1", "seed: set by the tuning protocol"),
        ("optimizer.lr=1e-3", "optimizer.lr: set by the tuning protocol"),
    ],
)
def test_bad_input_to_a_reproduction_is_one_line_exit_2_and_nothing_written(tmp_path: Path, override, message) -> None:
    results = tmp_path / "results"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "reproduce.py"),
            "whitening_nanogpt",
            "--results-dir",
            str(results),
            "--",
            override,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("reproduce: error: ") and message in errors[0], errors
    assert not results.exists()


@pytest.mark.parametrize("scale", ["cpu", "paper"])
@pytest.mark.parametrize("name", ["whitening_nanogpt", "whitening_colorization", "soap_lm", "soap_muon", "kl_methods"])
def test_arms_of_a_reproduction_differ_only_in_the_compared_optimizer(name: str, scale: str) -> None:
    """Same model, data, trainer (schedule, warmup), seed, weight decay, companion and its roles in every arm.

    (Reproduction (e) once gave the KL arms an AdamW companion for embeddings, head and gains while Shampoo and
    SOAP preconditioned them; (d) once ran the companion at a different lr per arm; (a) ran AdamW at wd 0.1
    against 0.01 for the others; (c) trained its embeddings and head three different ways.)
    """
    from conftest import compose
    from omegaconf import OmegaConf

    from soapbench.tuning import parity_differences

    reproduction = _load_reproduce().REPRODUCTIONS[name]
    experiment = reproduction.experiments[scale]
    variants = [a.variant for a in reproduction.arms]
    reproduce = _load_reproduce()
    configs = {}
    for v in variants:  # as the protocol runs each arm at its yaml lr: the design's weight decay per step included
        yaml_lr = OmegaConf.to_container(compose([f"experiment={experiment}", f"variant={v}"]), resolve=True)[
            "optimizer"
        ]["lr"]
        overrides = reproduce.arm_overrides(reproduction, v, yaml_lr)
        configs[v] = OmegaConf.to_container(compose([f"experiment={experiment}", *overrides]), resolve=True)
    assert parity_differences(configs) == []


def _two_arms(**second_optimizer) -> dict:
    from conftest import compose
    from omegaconf import OmegaConf

    first = OmegaConf.to_container(compose(["experiment=soap_muon_cpu", "variant=muon_ns10"]), resolve=True)
    second = OmegaConf.to_container(compose(["experiment=soap_muon_cpu", "variant=soap_muon_f40"]), resolve=True)
    for key, value in second_optimizer.items():
        target = second["optimizer"]
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return {"muon_ns10": first, "soap_muon_f40": second}


@pytest.mark.parametrize(
    "change, named",
    [
        ({"companion.lr": 3e-4}, "optimizer.companion.lr: muon_ns10=0.004, soap_muon_f40=0.0003"),
        ({"weight_decay": 0.1}, "optimizer.weight_decay per step (lr × wd): muon_ns10=0.0, soap_muon_f40=0.002"),
        ({"main_roles": ["matrix", "embedding"]}, "optimizer.main_roles"),
        ({"companion.betas": [0.9, 0.99]}, "optimizer.companion.betas"),
    ],
)
def test_arms_differing_in_what_they_do_not_compare_are_refused(change, named) -> None:
    from soapbench.tuning import parity_differences

    differences = parity_differences(_two_arms(**change))
    assert len(differences) == 1 and named in differences[0], differences
    reproduce = _load_reproduce()
    with pytest.raises(reproduce.BadInput, match="the arms differ in what they do not compare"):
        reproduce.check_parity("soap_muon_cpu", _two_arms(**change))


def test_one_weight_decay_coefficient_at_two_lrs_is_two_treatments() -> None:
    """Decoupled decay shrinks weights by lr × wd per step: the same wd at lrs 0.02 and 0.01 is refused, and the
    same decay per step (wd = D / lr) passes. (The committed (a) ran wd 0.1 in every arm at tuned lrs 3.16e-3 and
    9.49e-3: 3x more decay per step for Shampoo and SOAP, which its report flagged as a confound.)"""
    from soapbench.tuning import parity_differences

    same_wd = _two_arms(lr=0.01, weight_decay=0.1)
    same_wd["muon_ns10"]["optimizer"].update(lr=0.02, weight_decay=0.1)
    assert [d.split(":")[0] for d in parity_differences(same_wd)] == ["optimizer.weight_decay per step (lr × wd)"]
    same_decay = _two_arms(lr=0.01, weight_decay=1e-4 / 0.01)
    same_decay["muon_ns10"]["optimizer"].update(lr=0.02, weight_decay=float(f"{1e-4 / 0.02:.6g}"))
    assert parity_differences(same_decay) == []


def test_a_design_with_one_decay_per_step_gives_every_run_wd_equal_to_d_over_lr() -> None:
    """Grid, edge, report and borrowed runs alike: lr × wd = D whatever lr the tuning lands on."""
    from soapbench.tuning import Arm, Design, Planner

    design = Design(
        "x", (Arm("adamw"), Arm("soap_f10"), Arm("soap_f1", tune_from="soap_f10")), seeds=2, decay_per_step=1e-4
    )
    planner = Planner(design, {"adamw": 1e-3, "soap_f10": 3e-3, "soap_f1": 3e-3})
    ready = planner.initial()
    while ready:  # the largest lr always wins: every arm is extended up to the cap, then seeded
        job = ready.pop()
        ready += planner.finished(job, -job.lr)
    stages = {job.stage for job in planner.planned}
    assert stages == {"grid", "edge", "seed", "sibling"}
    for job in planner.planned:
        wd = float(next(o for o in job.overrides() if o.startswith("optimizer.weight_decay=")).split("=")[1])
        assert wd * job.lr == pytest.approx(1e-4, rel=1e-5), job
    assert planner.tuning_record()["protocol"]["decay_per_step"] == 1e-4
    plain = Planner(Design("x", (Arm("adamw"),)), {"adamw": 1e-3}).initial()
    assert not any(o.startswith("optimizer.weight_decay") for job in plain for o in job.overrides())


def test_a_companion_that_inherits_each_arms_lr_is_not_one_treatment() -> None:
    from soapbench.tuning import parity_differences

    arms = _two_arms()
    for config in arms.values():
        del config["optimizer"]["companion"]["lr"]  # the registry would hand it the arm's own (tuned) lr
    assert [d.split(":")[0] for d in parity_differences(arms)] == ["optimizer.companion.lr"]


def test_dry_run_prints_the_plan_and_its_run_count_and_writes_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for scale, runs, seeds in (
        # the main job: AdamW vs SOAP f=10, each grid centred on its earlier tuned lr (the parity check composes every
        # arm at its centre, weight decay D / lr included, so a centre away from the yaml lr must not read as a confound)
        ("cpu", "planned runs (no extension): 22", "tuning seeds [0, 1], report seeds [2, 3, 4, 5, 6]"),
        ("paper", "planned runs (no extension): 55", "report seeds [1339, 1340, 1341, 1342, 1343]"),
    ):
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "reproduce.py"),
                "whitening_nanogpt",
                "--scale",
                scale,
                "--dry-run",
                "--jobs",
                "2",
                "--results-dir",
                str(results),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert runs in result.stdout and "estimated ~" in result.stdout, result.stdout
        assert ("GPU-hours" in result.stdout) == (scale == "paper") and seeds in result.stdout
        if scale == "cpu":
            assert "arms: adamw, soap_f10\n" in result.stdout and "around each arm's tuned lr" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_soap_lm_reproduction_is_tuned_and_runs_the_shortened_schedules_on_report_seeds(tmp_path: Path) -> None:
    """(c) once ran its own untuned sweep (every arm at its yaml lr, budgets on the seeds that also picked nothing):
    now each arm is tuned on seed 0 and its best lr runs 100, 150 and 200 steps on report seeds 1-3."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reproduce.py"), "soap_lm", "--scale", "cpu", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tuning seeds [0], report seeds [1, 2, 3]" in result.stdout, result.stdout
    assert "at 100, 150, 200 steps" in result.stdout
    assert "planned runs (no extension): 36;" in result.stdout  # 3 arms x (3 grid + 3 seeds x 3 budgets)
    assert list(tmp_path.iterdir()) == []  # no results store, no logs, no report


def test_a_reproduction_finds_a_stored_run_by_its_identity_as_train_and_search_do(tmp_path: Path) -> None:
    """One definition of "the same run": the reproduction's store, the search driver and train.py agree on the
    directory, and a run whose config matches but whose identity does not (filed under another hash: another
    dataset, another identity recipe) is not taken for it. (The store once scanned every run directory and
    compared configs up to paths, so a run made on other data could stand in for the planned one.)"""
    import yaml

    from soapbench.composition import locate_planned_run
    from soapbench.search.driver import plan_trial
    from soapbench.tuning import Job

    reproduce = _load_reproduce()
    results = tmp_path / "results"
    job = Job("adamw", 1e-3, 0, "grid", 1.0)
    store = reproduce.Store(results, "whitening_nanogpt_cpu", [])
    overrides = ["experiment=whitening_nanogpt_cpu", f"paths.results_dir={results}", *job.overrides()]
    planned = locate_planned_run(overrides)
    assert store.run_dir(job) == planned.run_dir == plan_trial(overrides).run_dir
    assert planned.run_dir.parent == results / "runs" / "whitening_nanogpt_cpu"
    assert store.find(job) is None

    impostor = planned.run_dir.parent / f"{planned.run_name.rsplit('-', 1)[0]}-0123456789"
    impostor.mkdir(parents=True)
    config = reproduce._compose("whitening_nanogpt_cpu", [f"paths.results_dir={results}", *job.overrides()])
    (impostor / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"status": "completed", "seed": 0, "final_val_loss": 1.5, "final_full_val_loss": 1.5}
    (impostor / "summary.json").write_text(json.dumps(summary))
    assert store.find(job) is None and store.final(job) is False  # not this run: it is trained, not reused


def test_every_cpu_grid_centre_names_an_arm_and_says_where_it_came_from() -> None:
    """A centre keyed by a misspelt variant would silently leave that arm on its yaml lr while the plan says otherwise."""
    from soapbench.reproduction import REPRODUCTIONS

    for name, reproduction in REPRODUCTIONS.items():
        if reproduction.cpu_grid_centres:
            assert set(reproduction.cpu_grid_centres) <= {a.variant for a in reproduction.arms}, name
            assert all(lr > 0 for lr in reproduction.cpu_grid_centres.values()), name
            assert reproduction.cpu_centre_source, name
