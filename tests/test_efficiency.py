"""The SOAP-paper efficiency method and the performance profiles, on curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import synthetic_runs as syn

from soapbench.report.analysis import analyze
from soapbench.report.efficiency import BudgetPoint, fit_power_law, schedule_efficiency
from soapbench.report.profiles import performance_profile, performance_ratios
from soapbench.report.store import load_experiment

FRACTIONS = (0.5, 0.625, 0.75, 0.875, 1.0)


@pytest.mark.parametrize(
    ("a", "b", "beta", "full"),
    [(3.0, 5.0, 0.5, 1000), (2.1, 40.0, 0.7, 50_000), (1.5, 0.8, 0.3, 200)],
)
def test_fit_recovers_known_power_law(a: float, b: float, beta: float, full: int) -> None:
    x = full * np.array(FRACTIONS)
    outcome = fit_power_law(x, a + b * x**-beta)
    assert outcome.reason is None
    fit = outcome.fit
    assert fit.a == pytest.approx(a, rel=1e-8)
    assert fit.b == pytest.approx(b, rel=1e-8)
    assert fit.beta == pytest.approx(beta, rel=1e-8)
    assert not fit.beta_at_bound
    # inverting the fit gives back the budget
    x0 = 0.7 * full
    assert fit.solve(a + b * x0**-beta) == pytest.approx(x0, rel=1e-8)


def test_fit_with_exactly_three_points_interpolates() -> None:
    x = np.array([500.0, 750.0, 1000.0])
    fit = fit_power_law(x, 3 + 5 * x**-0.5).fit
    assert (fit.a, fit.b, fit.beta) == pytest.approx((3.0, 5.0, 0.5), rel=1e-8)


def test_fit_refuses_with_fewer_than_three_budgets_or_rising_loss() -> None:
    two = fit_power_law([500, 1000], [3.2, 3.1])
    assert two.fit is None and two.reason.startswith("cannot fit: need >= 3 distinct budgets")
    # repeated budgets (seeds) do not count as distinct points; non-finite losses are dropped first
    repeated = fit_power_law([500, 500, 1000, 750], [3.2, 3.21, 3.1, math.inf])
    assert "have 2" in repeated.reason
    rising = fit_power_law([500, 750, 1000], [3.0, 3.1, 3.2])
    assert rising.reason == "cannot fit: loss does not fall with budget (b <= 0)"


def test_schedule_efficiency_known_ratio_in_steps_and_time() -> None:
    # AdamW: L(N) = 3 + 5 N^-0.5 at its full budget N = 1000, 0.01 s/step -> T_base = 10 s.
    # The faster optimizer: L(N) = 3 + 5 (1.5 N)^-0.5 (1.5x fewer steps), 0.012 s/step.
    target = 3 + 5 * 1000**-0.5
    points = [BudgetPoint(1000 * f, 0.012 * 1000 * f, 3 + 5 * (1.5 * 1000 * f) ** -0.5, 2) for f in FRACTIONS]
    points.append(BudgetPoint(300.0, 3.6, math.inf, 1))  # a diverged budget is left out of the fit
    result = schedule_efficiency(points, target, baseline_steps=1000, baseline_seconds=10.0)
    assert result.steps.budget_to_target == pytest.approx(1000 / 1.5, rel=1e-8)
    assert result.steps.efficiency == pytest.approx(1.5, rel=1e-8)
    assert result.time.budget_to_target == pytest.approx(8.0, rel=1e-8)
    assert result.time.efficiency == pytest.approx(1.25, rel=1e-8)
    # in seconds the same law reads L(T) = 3 + (5 / sqrt(125)) T^-0.5
    assert result.time.outcome.fit.b == pytest.approx(5 / math.sqrt(125), rel=1e-8)
    assert result.steps.outcome.fit.n_points == 5 and not result.steps.extrapolated


def test_schedule_efficiency_target_below_asymptote_is_not_reached() -> None:
    points = [BudgetPoint(1000 * f, 10 * f, 3 + 5 * (1000 * f) ** -0.5, 1) for f in FRACTIONS]
    result = schedule_efficiency(points, target=2.9, baseline_steps=1000, baseline_seconds=10)
    assert result.steps.efficiency is None
    assert result.steps.reason.startswith("not reached: fitted asymptote a = 3")


def test_efficiency_from_a_synthetic_store(tmp_path) -> None:
    """Runs on disk -> families of shortened schedules -> fit -> known 1.5x steps / 1.25x time."""
    syn.power_law_schedule_runs(tmp_path, "eff", "adamw", lambda n: 3 + 5 * n**-0.5, 0.01, 1000, [1.0], seeds=(0, 1))
    syn.power_law_schedule_runs(
        tmp_path,
        "eff",
        "soap",
        lambda n: 3 + 5 * (1.5 * n) ** -0.5,
        0.012,
        1000,
        FRACTIONS,
        seeds=(0, 1),
        precondition_frequency=10,
    )
    # a worse lr of the same optimizer, full budget only: must not join the best family
    syn.power_law_schedule_runs(
        tmp_path,
        "eff",
        "soap",
        lambda n: 3 + 5 * (1.1 * n) ** -0.5,
        0.012,
        1000,
        [1.0],
        seeds=(0,),
        lr=3e-3,
        precondition_frequency=10,
    )
    analysis = analyze(load_experiment(tmp_path, "eff"))
    (workload,) = analysis.workloads
    assert workload.target == pytest.approx(3 + 5 * 1000**-0.5, rel=1e-12)
    soap = workload.optimizers["soap f=10"]
    assert soap.best.value("optimizer.lr") == 1e-3
    assert [p.steps for p in soap.schedule.points] == [500, 625, 750, 875, 1000]
    fit = soap.schedule.steps.outcome.fit
    assert (fit.a, fit.b, fit.beta) == pytest.approx((3.0, 5 / math.sqrt(1.5), 0.5), rel=1e-8)
    assert soap.schedule.steps.efficiency == pytest.approx(1.5, rel=1e-8)
    assert soap.schedule.time.efficiency == pytest.approx(1.25, rel=1e-8)
    assert workload.optimizers["adamw"].schedule is None  # one budget is not a sweep


def test_performance_profile_hand_computed() -> None:
    times = pd.DataFrame(
        {"adamw": [10.0, 8.0, math.inf], "soap": [5.0, 16.0, math.inf], "shampoo": [math.inf, 4.0, math.inf]},
        index=["w1", "w2", "w3"],
    )
    ratios = performance_ratios(times)
    assert ratios.loc["w1"].tolist() == [2.0, 1.0, math.inf]
    assert ratios.loc["w2"].tolist() == [2.0, 4.0, 1.0]
    assert ratios.loc["w3"].tolist() == [math.inf] * 3  # nobody reached the target there
    rho = performance_profile(ratios, [1.0, 2.0, 4.0])
    assert rho.loc[1.0].tolist() == pytest.approx([0.0, 1 / 3, 1 / 3])
    assert rho.loc[2.0].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert rho.loc[4.0].tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])


def _noisy_points(fractions, seeds=(0, 1, 2, 3), full=1000):
    """L(N) = 3 + 5 (1.5 N)^-0.5 plus a per-seed offset: the same seed is as lucky at every budget."""
    offsets = {0: -0.004, 1: 0.003, 2: 0.001, 3: -0.002}
    points = []
    for f in fractions:
        n = full * f
        per_seed = tuple(
            (str(s), 3 + 5 * (1.5 * n) ** -0.5 + offsets[s] + 0.001 * (s - 1.5) * f, 0.012 * n) for s in seeds
        )
        points.append(
            BudgetPoint(n, 0.012 * n, float(np.mean([v for _, v, _ in per_seed])), len(seeds), seed_losses=per_seed)
        )
    return points


def test_fit_efficiency_has_a_seed_bootstrap_interval_only_with_more_budgets_than_parameters() -> None:
    target = 3 + 5 * 1000**-0.5
    five = schedule_efficiency(_noisy_points(FRACTIONS), target, baseline_steps=1000, baseline_seconds=10.0)
    low, high = five.steps.interval
    assert low < five.steps.efficiency < high and high - low < 0.5
    assert five.steps.interval_note.startswith("95% seed bootstrap")
    # three budgets, three parameters: the curve passes through every point, there is no noise left to measure
    three = schedule_efficiency(_noisy_points((0.5, 0.75, 1.0)), target, baseline_steps=1000, baseline_seconds=10.0)
    assert three.steps.efficiency is not None and three.steps.interval is None
    assert three.steps.interval_note == "exact interpolation: no uncertainty"
    assert three.time.interval_note == "exact interpolation: no uncertainty"


def test_a_saving_uses_the_curve_crossing_when_the_fit_interpolates_exactly(tmp_path) -> None:
    from soapbench.report.reference import ReferenceEntry, ours_for

    syn.power_law_schedule_runs(tmp_path, "eff", "adamw", lambda n: 3 + 5 * n**-0.5, 0.01, 1000, [1.0], seeds=(0, 1))
    syn.power_law_schedule_runs(
        tmp_path,
        "eff",
        "soap",
        lambda n: 3 + 5 * (1.5 * n) ** -0.5,
        0.012,
        1000,
        (0.5, 0.75, 1.0),
        seeds=(0, 1),
        precondition_frequency=10,
    )
    (workload,) = analyze(load_experiment(tmp_path, "eff")).workloads
    entry = ReferenceEntry("soap", "paper", "step_saving", ">=", 0.4, {}, "adamw", "toy", "toy")
    saving, how = ours_for(entry, workload)
    assert how == "curve crossing (schedule fit: exact interpolation: no uncertainty)"
    soap = workload.optimizers["soap f=10"]
    assert saving == pytest.approx(1 - 1 / soap.efficiency_steps)
