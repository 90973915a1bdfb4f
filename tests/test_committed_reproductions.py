"""What is committed under results/reproductions/ keeps the tuning protocol's promises and can be recomputed.

Read from the committed files alone, nothing re-run: every reproduction carries its report, tables and tuning log;
no arm's tuning seed is one of its report seeds; every tuned lr is interior to its grid or flagged beside its
verdict; every arm is tuned by the same rule; and each p-value in comparisons.csv comes back from per_seed.csv with
scipy's paired t-test and Holm's step-down adjustment, computed here independently of soapbench.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from tests.conftest import REPO

REPRODUCTIONS = sorted(path for path in (REPO / "results" / "reproductions").iterdir() if path.is_dir())
FILES = (
    "README.md",
    "report.md",
    "report.html",
    "report.csv",
    "per_seed.csv",
    "comparisons.csv",
    "claims.csv",
    "tuning.json",
    "sources.json",
)
by_name = pytest.mark.parametrize("folder", REPRODUCTIONS, ids=[path.name for path in REPRODUCTIONS])


def _holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest p times (m - k), made monotone, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p_values) - rank) * p_values[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def test_the_five_reproductions_are_committed() -> None:
    assert {path.name for path in REPRODUCTIONS} >= {
        "whitening_nanogpt_cpu",
        "whitening_colorization_cpu",
        "soap_lm_cpu",
        "soap_muon_cpu",
        "kl_methods_cpu",
    }


@by_name
def test_every_reproduction_carries_its_report_tables_and_tuning_log(folder: Path) -> None:
    missing = [name for name in FILES if not (folder / name).is_file()]
    assert not missing, f"{folder.name} lacks {missing}: re-run and commit it with the report it wrote"


@by_name
def test_no_tuning_seed_is_a_report_seed_and_every_arm_is_tuned_by_one_rule(folder: Path) -> None:
    tuning = json.loads((folder / "tuning.json").read_text())
    protocol = tuning["protocol"]
    assert not set(protocol["tune_seeds"]) & set(protocol["report_seeds"])
    for name, arm in tuning["arms"].items():
        assert not set(arm["tune_seeds"]) & set(arm["seeds"]), name
        assert arm["tune_seeds"] == protocol["tune_seeds"], f"{name}: tuned on other seeds than the other arms"
        assert arm["seeds"] == protocol["report_seeds"], f"{name}: reported on other seeds than the other arms"
        if arm["tuning"] == "borrowed":  # its lr is another arm's: said beside its verdict
            assert arm["flags"] and arm["tuned_from"] in tuning["arms"], name
            continue
        assert arm["tuning"] == "grid", name
        assert 0 <= arm["extensions"] <= protocol["max_extensions"], name
        assert len(arm["grid"]) == protocol["points"] + arm["extensions"], f"{name}: not the protocol's grid"
        ordered = sorted(arm["grid"])
        for low, high in zip(ordered, ordered[1:], strict=False):  # one factor between neighbours (3 digits kept)
            assert high / low == pytest.approx(protocol["factor"], rel=2e-3), f"{name}: grid {arm['grid']}"
        by_seed = arm["results_by_seed"]
        assert {float(lr) for lr in by_seed} == set(arm["grid"]), f"{name}: a grid point was not scored"
        means = {}
        for lr, finals in by_seed.items():
            assert sorted(int(seed) for seed in finals) == sorted(arm["tune_seeds"]), f"{name} at lr {lr}"
            means[float(lr)] = sum(finals.values()) / len(finals)
        assert arm["best_lr"] == min(means, key=means.get), f"{name}: the best lr is not the grid's lowest mean"
        interior = ordered[0] < arm["best_lr"] < ordered[-1]
        assert interior or (arm["still_on_edge"] and arm["flags"]), f"{name}: best on an edge and not flagged"


@by_name
def test_means_use_report_seeds_only_and_every_p_value_recomputes_from_per_seed(folder: Path) -> None:
    protocol = json.loads((folder / "tuning.json").read_text())["protocol"]
    per_seed = pd.read_csv(folder / "per_seed.csv")
    assert set(per_seed["role"]) <= {"tune", "report"}
    assert set(per_seed.loc[per_seed["role"] == "report", "seed"]) <= set(protocol["report_seeds"])
    assert set(per_seed.loc[per_seed["role"] == "tune", "seed"]) <= set(protocol["tune_seeds"])
    reported = per_seed[per_seed["role"] == "report"]
    assert all(not rows["seed"].duplicated().any() for _, rows in reported.groupby("arm")), "one report run a seed"
    finals = {arm: dict(zip(rows["seed"], rows["final"], strict=True)) for arm, rows in reported.groupby("arm")}

    summary = pd.read_csv(folder / "report.csv").set_index("arm")
    for arm, values in finals.items():
        if all(math.isfinite(value) for value in values.values()):
            mean = sum(values.values()) / len(values)
            assert summary.loc[arm, "final_mean"] == pytest.approx(mean, abs=6e-5 + 1e-4 * abs(mean)), arm
            assert summary.loc[arm, "n_seeds"] == len(values), arm

    comparisons = pd.read_csv(folder / "comparisons.csv")
    tested = comparisons[comparisons["p_value"].notna()]
    raw = []
    for row in tested.itertuples():
        seeds = sorted(set(finals[row.arm]) & set(finals[row.baseline]))
        assert len(seeds) == row.n_pairs, row.arm
        mine = [finals[row.arm][seed] for seed in seeds]
        base = [finals[row.baseline][seed] for seed in seeds]
        result = stats.ttest_rel(mine, base)
        assert row.p_value == pytest.approx(result.pvalue, rel=1e-6), row.arm
        assert row.mean_diff == pytest.approx(sum(mine) / len(mine) - sum(base) / len(base), abs=1e-9), row.arm
        raw.append(result.pvalue)
    for row, adjusted in zip(tested.itertuples(), _holm(raw), strict=True):
        assert row.p_adjusted == pytest.approx(adjusted, rel=1e-6), row.arm
        if row.verdict in ("better", "worse"):
            assert adjusted < 0.05 and (row.mean_diff < 0) == (row.verdict == "better"), row.arm
        else:
            assert adjusted >= 0.05 or row.verdict == "not tested", row.arm
