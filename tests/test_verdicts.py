"""Verdicts that survive review, on synthetic runs: paired seeds, Holm, equivalence margins, claims in their regime,
confounds, every reversed pair named, and every number recomputable from the CSVs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic_runs as syn
from scipy import stats

from soapbench.report.analysis import analyze, comparisons, fairness_warnings
from soapbench.report.reference import check_claims, load_reference
from soapbench.report.render import csv_rows, markdown
from soapbench.report.stats import holm, judge, minimum_detectable_effect, paired_test, power
from soapbench.report.store import load_experiment

REPO = Path(__file__).resolve().parents[1]


def _arm(
    root: Path,
    optimizer: str,
    finals: list[float],
    lr: float = 1e-3,
    seconds_per_step: float = 0.1,
    experiment: str = "exp",
    slow_seeds: tuple[int, ...] = (),
    **extra,
) -> None:
    """One arm: seed k ends at finals[k] after 400 steps."""
    for seed, final in enumerate(finals):
        per_step = seconds_per_step * (1.5 if seed in slow_seeds else 1.0)
        evals = [(step, step * per_step, final + 20.0 / step - 0.05) for step in (100, 200, 300, 400)]
        config = syn.base_config(experiment, optimizer, seed, lr, 400, **extra)
        syn.write_run(
            root,
            experiment,
            f"{optimizer}_{'_'.join(f'{k}{v}' for k, v in extra.items())}_lr{lr}_s{seed}",
            config,
            evals,
        )


def _reference(tmp_path: Path, body: str, name: str = "toy") -> Path:
    directory = tmp_path / "reference"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.yaml").write_text(
        "comparison: toy\npaper: a toy paper\nmetric: val/loss\nsettings: {paper: toy setting}\nentries: []\n"
        "scale: {paper: {steps: 400}}\nlegend: toy\n" + body,
        encoding="utf-8",
    )
    return directory


# Seeds differ a lot from each other (the batches and initial weights), the arm's gain per seed is steady.
SEED_LEVELS = [1.80, 1.95, 1.70, 1.88, 2.02]
STEADY_GAIN = [-0.020, -0.024, -0.018, -0.022, -0.021]


def test_paired_test_finds_a_steady_gain_welch_misses(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _arm(root, "adamw", SEED_LEVELS)
    _arm(root, "soap", [a + g for a, g in zip(SEED_LEVELS, STEADY_GAIN)], precondition_frequency=10)
    (w,) = analyze(load_experiment(root, "exp")).workloads
    soap = w.optimizers["soap f=10"]
    base, mine = w.optimizers["adamw"].best.values, soap.best.values
    assert stats.ttest_ind(mine, base, equal_var=False).pvalue > 0.5  # unpaired: the seeds' spread hides the gain
    assert soap.paired.n == 5 and soap.paired.mean_diff == pytest.approx(np.mean(STEADY_GAIN))
    assert soap.paired.p_value == pytest.approx(stats.ttest_rel(mine, base).pvalue) and soap.paired.p_value < 1e-4
    assert soap.versus_baseline.verdict == "better"
    low, high = soap.paired.ci95
    assert low < np.mean(STEADY_GAIN) < high < 0
    assert soap.paired.bootstrap95 is not None and soap.paired.bootstrap95[1] < 0


def test_only_seeds_present_in_both_arms_are_paired() -> None:
    test = paired_test({"0": 1.0, "1": 1.1, "2": 1.3, "7": 0.0}, {"0": 1.1, "1": 1.2, "2": 1.35, "3": 9.0})
    assert test.seeds == ("0", "1", "2") and test.mean_diff == pytest.approx(-0.25 / 3)


def test_holm_adjustment_by_hand_and_on_a_borderline_verdict(tmp_path: Path) -> None:
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])  # 3·0.01; max(2·0.03, 1·0.04)
    root = tmp_path / "results"
    _arm(root, "adamw", SEED_LEVELS[:3])
    # p ≈ 0.03 on its own: "better" in a report with one comparison ...
    _arm(root, "soap", [a + g for a, g in zip(SEED_LEVELS, [-0.008, -0.012, -0.0155])], precondition_frequency=10)
    (alone,) = analyze(load_experiment(root, "exp")).workloads
    soap = alone.optimizers["soap f=10"]
    assert 0.025 < soap.paired.p_value < 0.05 and soap.versus_baseline.verdict == "better"
    # ... but not once a second, unrelated comparison joins the report: Holm doubles the smallest p
    _arm(root, "shampoo", [a + g for a, g in zip(SEED_LEVELS, [0.03, -0.04, 0.01])], precondition_frequency=10)
    (both,) = analyze(load_experiment(root, "exp")).workloads
    soap = both.optimizers["soap f=10"]
    assert soap.versus_baseline.p_adjusted == pytest.approx(2 * soap.paired.p_value)
    assert soap.versus_baseline.verdict == "inconclusive"


def test_equivalent_only_when_the_90_percent_interval_lies_inside_the_margin() -> None:
    base = {str(i): v for i, v in enumerate(SEED_LEVELS)}
    tight = paired_test({s: v + 0.001 + 0.0002 * int(s) for s, v in base.items()}, base)
    wide = paired_test({s: v + d for (s, v), d in zip(base.items(), [0.004, -0.006, 0.008, -0.003, 0.002])}, base)
    assert judge(tight, tight.p_value, margin=0.005).verdict == "worse"  # steady: significant, however small
    steady_tie = paired_test({s: v + (0.001 if int(s) % 2 else -0.001) for s, v in base.items()}, base)
    verdict = judge(steady_tie, steady_tie.p_value, margin=0.005)
    assert verdict.verdict == "equivalent" and "inside ±0.005" in verdict.reason
    assert judge(steady_tie, steady_tie.p_value, margin=None).verdict == "inconclusive"  # no margin, no equivalence
    wide_verdict = judge(wide, wide.p_value, margin=0.005)
    assert wide_verdict.verdict == "inconclusive"
    mde = minimum_detectable_effect(wide.sd_diff, wide.n)
    assert power(mde, wide.sd_diff, wide.n) == pytest.approx(0.8, abs=1e-6)
    assert f"only gaps ≥ {mde:.4f} are detected at 80% power" in wide_verdict.reason and "seeds" in wide_verdict.reason
    # two seeds (one degree of freedom): scipy's noncentral t is nan in its far tail for some shifts
    two = paired_test({"0": 1.0, "1": 1.3}, {"0": 1.05, "1": 1.1})
    two_mde = minimum_detectable_effect(two.sd_diff, two.n)
    assert math.isfinite(two_mde) and power(two_mde, two.sd_diff, 2) == pytest.approx(0.8, abs=1e-6)


def test_margin_comes_from_the_reference_and_reaches_the_report(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _arm(root, "adamw", SEED_LEVELS)
    _arm(root, "soap", [a + (0.001 if i % 2 else -0.001) for i, a in enumerate(SEED_LEVELS)], precondition_frequency=10)
    reference = load_reference(
        "toy", _reference(tmp_path, "margin: {value: 0.005, reason: half the toy gap}\nclaims: []\n")
    )
    analysis = analyze(load_experiment(root, "exp"))
    (w,) = analysis.workloads
    assert comparisons(w, 0.005)["soap f=10"].verdict == "equivalent"
    report, table = markdown(analysis, "cmd", "now", reference, [])
    assert "**equivalent**" in table.split("| soap f=10 |")[1].split("\n")[0]
    assert "Margin ±0.005 (half the toy gap)" in report and "Holm-adjusted" in report


def _cli(args: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("report_cli", REPO / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args)


def _claim_row(tmp_path: Path, root: Path, claim: str):
    """check_claims' row for the one claim ``claim`` (a YAML flow mapping) over the runs under ``root``."""
    body = f"margin: {{value: 0.01, reason: toy}}\nclaims:\n  - {claim}\n"
    reference = load_reference("toy", _reference(tmp_path, body))
    (w,) = analyze(load_experiment(root, "exp")).workloads
    (row,) = check_claims(reference, w)
    return reference, row


def test_a_claim_outside_its_regime_is_not_tested_and_its_effects_are_printed(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _arm(root, "adamw", SEED_LEVELS[:3])
    _arm(root, "soap", [a - 0.2 for a in SEED_LEVELS[:3]], precondition_frequency=10)
    reference, row = _claim_row(
        tmp_path,
        root,
        "{setting: paper, kind: order, order: [adamw, soap], text: AdamW "
        "below SOAP, source: toy, regime: {tokens: 40.0e6, steps: 300, "
        "same_parameter_treatment: true, why: the paper's budget}}",
    )
    # 400 steps × 16384 tokens: reversed and significant, yet no verdict on the paper at this scale
    assert row["verdict"] == "not tested"
    assert row["reason"] == "6.55M tokens seen, the claim is about ≥ 40M"
    assert row["measured"].startswith("soap f=10 − adamw: -0.2000 [")
    report, _ = markdown(analyze(load_experiment(root, "exp")), "cmd", "now", reference, [])
    assert "Measured at our scale (effect sizes, not verdicts on the paper)" in report
    assert "**does not hold**" not in report
    assert "- [paper] AdamW below SOAP: **not tested**: 6.55M tokens seen, the claim is about ≥ 40M" in report


def test_an_ordering_names_every_reversed_pair(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _arm(root, "shampoo", SEED_LEVELS[:4], precondition_frequency=1)
    _arm(root, "soap", [a - 0.03 for a in SEED_LEVELS[:4]], precondition_frequency=1)
    _arm(root, "soap", [a - 0.02 + 0.001 * i for i, a in enumerate(SEED_LEVELS[:4])], precondition_frequency=10)
    _arm(root, "adamw", [a + 0.05 + 0.001 * i for i, a in enumerate(SEED_LEVELS[:4])])
    _, row = _claim_row(
        tmp_path,
        root,
        "{setting: paper, kind: best, arm: shampoo f=1, among: [adamw, soap f=1, "
        "soap f=10], text: Shampoo f=1 lowest, source: toy, regime: {tokens: 1.0e6, "
        "same_parameter_treatment: true, why: toy}}",
    )
    assert row["verdict"] == "does not hold"
    assert row["reason"] == "reversed (Holm p < 0.05): soap f=1 below shampoo f=1; soap f=10 below shampoo f=1"


def test_confounds_of_the_parameters_no_arm_compares_are_flagged(tmp_path: Path) -> None:
    # AdamW trains every parameter itself; Muon sends all but the matrices to an AdamW companion that inherits
    # Muon's lr (0.02 against AdamW's 1e-3): the embeddings and head are trained differently in the two arms.
    root = tmp_path / "results"
    _arm(root, "adamw", SEED_LEVELS[:2])
    _arm(root, "muon", [a - 0.01 for a in SEED_LEVELS[:2]], lr=0.02)
    (w,) = analyze(load_experiment(root, "exp")).workloads
    muon = w.optimizers["muon"]
    flagged = {k: (v, b) for k, v, b in muon.treatment_confounds}
    assert flagged["roles to the companion"] == (("vector", "embedding", "head", "input"), "none")
    assert flagged["weight decay per step (lr × wd)"] == pytest.approx((0.002, 1e-4))
    assert any(
        n.startswith("muon: confound: treats the parameters it does not compare differently")
        for n in fairness_warnings(w)
    )


def test_every_number_is_recomputable_from_the_csvs(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _arm(root, "adamw", SEED_LEVELS[:4])
    _arm(root, "adamw", [a + 0.3 for a in SEED_LEVELS[:1]], lr=1e-2)  # a tuning run on seed 0
    _arm(root, "soap", [a - 0.01 * (i + 1) for i, a in enumerate(SEED_LEVELS[:4])], precondition_frequency=10)
    _arm(root, "shampoo", [a + 0.004 * (-1) ** i for i, a in enumerate(SEED_LEVELS[:3])], precondition_frequency=10)
    out = tmp_path / "rep"
    assert _cli(["--experiment", "exp", "--results-dir", str(root), "--out", str(out), "--no-figures"]) == 0
    seeds = pd.read_csv(out / "per_seed.csv")
    assert list(seeds.columns[:5]) == ["arm", "seed", "role", "hyperparameters", "final"]
    assert (seeds["role"] == "tune").sum() == 1 and seeds.loc[seeds["role"] == "tune", "arm"].item() == "adamw"
    compared = pd.read_csv(out / "comparisons.csv").set_index("arm")
    assert list(compared.columns[:9]) == [
        "baseline",
        "n_pairs",
        "mean_diff",
        "ci_low",
        "ci_high",
        "p_value",
        "p_adjusted",
        "margin",
        "verdict",
    ]
    reported = seeds[seeds["role"] == "report"].pivot(index="seed", columns="arm", values="final")
    raw = {}
    for arm in compared.index:
        pairs = reported[[arm, "adamw"]].dropna()
        raw[arm] = stats.ttest_rel(pairs[arm], pairs["adamw"]).pvalue
        assert compared.loc[arm, "n_pairs"] == len(pairs)
        assert compared.loc[arm, "mean_diff"] == pytest.approx((pairs[arm] - pairs["adamw"]).mean(), abs=1e-9)
        assert compared.loc[arm, "p_value"] == pytest.approx(raw[arm])
    adjusted = dict(zip(raw, holm(list(raw.values()))))
    for arm, p in adjusted.items():
        assert compared.loc[arm, "p_adjusted"] == pytest.approx(p)
        assert (compared.loc[arm, "verdict"] in ("better", "worse")) == (p < 0.05)
    assert (out / "claims.csv").read_text().startswith("claim,verdict,reason")


def test_a_run_slower_than_its_arms_median_for_the_same_work_is_flagged(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _arm(root, "adamw", SEED_LEVELS[:4], slow_seeds=(2,))
    _arm(root, "soap", SEED_LEVELS[:4], precondition_frequency=10)
    analysis = analyze(load_experiment(root, "exp"))
    notes = fairness_warnings(analysis.workloads[0])
    assert any("adamw: timing outlier(s): adamw__lr0.001_s2 0.15 s/step vs the arm's median 0.1" in n for n in notes)
    assert not any(n.startswith("soap f=10: timing") for n in notes)
    _, table = markdown(analysis, "cmd", "now", None, [])
    assert "(timing outlier in its seeds)" in table.split("| adamw |")[1].split("\n")[0]
    assert math.isfinite(analysis.workloads[0].optimizers["adamw"].best.seconds)
    # report.csv (which the leaderboard reads) says so too: once it marked only a shared machine
    rows = {row["arm"]: row for row in csv_rows(analysis, None)}
    assert "timing outlier(s) in 1 of the best configuration's 4 runs" in rows["adamw"]["wallclock_unreliable"]
    assert rows["soap f=10"]["wallclock_unreliable"] is None


def test_the_report_counts_the_parameters_each_optimizer_trains(tmp_path: Path) -> None:
    root = tmp_path / "results"
    counts = {"muon": 200_000, "companion_adamw": 600_000}
    for seed in (0, 1):
        syn.write_run(
            root,
            "exp",
            f"muon-s{seed}",
            syn.base_config("exp", "muon", seed, 0.02, 400),
            [(400, 40.0, 1.7 + 0.01 * seed)],
            summary_extra={"params_by_optimizer": counts},
        )
        syn.write_run(
            root,
            "exp",
            f"adamw-s{seed}",
            syn.base_config("exp", "adamw", seed, 1e-3, 400),
            [(400, 40.0, 1.8 + 0.01 * seed)],
        )
    report, _ = markdown(analyze(load_experiment(root, "exp")), "cmd", "now", None, [])
    section = report.split("### Who trains which parameters")[1]
    assert (
        "| muon | muon 0.2M (25%); companion_adamw 0.6M (75%) | ('vector', 'embedding', 'head', 'input') |" in section
    )
    assert "| adamw | not recorded" in section


def test_the_trainer_records_the_parameters_each_optimizer_trains() -> None:
    import torch

    from soapbench.optimizers import build_optimizer
    from soapbench.parameter_map import counts_by_optimizer, parameter_map

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    counts = counts_by_optimizer(parameter_map(model, build_optimizer("muon", model, lr=0.02), "muon"))
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    assert counts["muon"] == 12 and set(counts) == {"muon", "companion_adamw"}


def test_figures_share_one_colour_per_arm_mark_unreliable_time_and_draw_no_empty_bars(tmp_path: Path) -> None:
    from matplotlib.colors import to_rgba

    from soapbench.report import figures as figs

    root = tmp_path / "results"
    shared = {"machine_shared": {"shared": True, "slowed_fraction": 0.4, "max_load": 3.0}}
    _arm(root, "adamw", SEED_LEVELS[:3])
    _arm(root, "adamw", [a + 0.02 for a in SEED_LEVELS[:1]], lr=1e-2)  # a single-seed grid point
    _arm(root, "adamw", [a + 0.03 for a in SEED_LEVELS[:1]], lr=1e-4)
    _arm(root, "shampoo", [a - 0.01 for a in SEED_LEVELS[:3]], precondition_frequency=1)
    _arm(root, "shampoo", [a - 0.02 for a in SEED_LEVELS[:3]], precondition_frequency=10)
    for seed in range(3):  # never reaches AdamW's target, on a shared machine
        evals = [(step, step * 0.3, SEED_LEVELS[seed] + 0.5 + 20.0 / step) for step in (100, 200, 300, 400)]
        syn.write_run(
            root,
            "exp",
            f"soap-s{seed}",
            syn.base_config("exp", "soap", seed, 1e-3, 400, precondition_frequency=10),
            evals,
            summary_extra=shared,
        )
    (w,) = analyze(load_experiment(root, "exp")).workloads
    colors = figs.arm_colors(w)
    drawn = {}
    original = figs._save

    def keep(fig, out_dir, name, caption, experiment, runs):
        drawn[name] = fig
        return original(fig, out_dir, name, caption, experiment, runs)

    figs._save = keep
    try:
        curves = figs.loss_curves(w, "val/loss", tmp_path, "loss_curves")
        sensitivity = figs.lr_sensitivity(w, "val/loss", tmp_path, "lr_sensitivity")
        figs.frequency_ablation(w, "val/loss", tmp_path, "frequency_ablation")
        figs.efficiency_bars(w, tmp_path, "efficiency")
    finally:
        figs._save = original
    # the same arm has the same colour in every figure
    for ax in drawn["loss_curves"].axes:
        for line in ax.get_lines():
            arm = line.get_label().split(",")[0].split(" (")[0]
            if arm in colors:
                assert to_rgba(line.get_color()) == to_rgba(colors[arm]), (arm, line.get_color())
    (speed, time_panel) = drawn["efficiency"].axes
    bar_colors = {to_rgba(p.get_facecolor()) for p in time_panel.patches if p.get_height() > 0}
    assert to_rgba(colors["shampoo f=10"]) in bar_colors and to_rgba(colors["soap f=10"]) not in bar_colors
    assert all(p.get_height() > 0 for ax in (speed, time_panel) for p in ax.patches)  # no zero-height bars
    assert any("not\nreached" in t.get_text() for t in time_panel.texts)
    # the wall-clock panel of the curves names the unreliable arm, the step panel does not
    labels = [t.get_text() for t in drawn["loss_curves"].axes[1].get_legend().get_texts()]
    assert any(t.startswith("soap f=10") and t.endswith("(time unreliable)") for t in labels)
    # every point of an lr line averages the same seeds (the grid ran lr 1e-2 and 1e-4 on seed 0 only)
    (adamw_line,) = [ln for ln in drawn["lr_sensitivity"].axes[0].get_lines() if ln.get_label().startswith("adamw")]
    assert "n=1 per point" in adamw_line.get_label()
    assert list(adamw_line.get_ydata()) == pytest.approx([SEED_LEVELS[0] + 0.03, SEED_LEVELS[0], SEED_LEVELS[0] + 0.02])
    assert "same n" in sensitivity.caption and curves is not None


def test_inside_its_regime_a_claim_holds_or_is_inconclusive_and_treatment_is_a_condition(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _arm(root, "adamw", [a + 0.05 + 0.002 * i for i, a in enumerate(SEED_LEVELS[:4])])
    _arm(root, "soap", [a + 0.004 * (-1) ** i for i, a in enumerate(SEED_LEVELS[:4])], precondition_frequency=10)
    _arm(root, "shampoo", SEED_LEVELS[:4], precondition_frequency=10)
    regime = "regime: {tokens: 1.0e6, same_parameter_treatment: true, why: toy}"
    _, holds = _claim_row(
        tmp_path, root, f"{{setting: paper, kind: order, order: [shampoo, adamw], text: t, source: toy, {regime}}}"
    )
    assert holds["verdict"] == "holds", holds
    _, unsure = _claim_row(
        tmp_path, root, f"{{setting: paper, kind: order, order: [soap, shampoo], text: t, source: toy, {regime}}}"
    )
    assert unsure["verdict"] == "inconclusive" and unsure["reason"].startswith("not significant after Holm: soap f=10")
    # Muon sends the embeddings and head to a companion; AdamW trains them itself: no verdict on such a claim
    _arm(root, "muon", SEED_LEVELS[:4], lr=0.02)
    _, untested = _claim_row(
        tmp_path, root, f"{{setting: paper, kind: order, order: [muon, adamw], text: t, source: toy, {regime}}}"
    )
    assert untested["verdict"] == "not tested"
    assert "the arms treat the parameters they do not compare differently (companion" in untested["reason"]
    assert "roles to the companion" in untested["reason"]


def _tuned_store(root: Path) -> dict:
    """Two arms tuned as reproduce.py does: lrs 1e-3 and 3e-3 on tuning seed 0, then 3e-3 on report seeds 1-3.

    Seed 0 at the chosen lr is far below the report seeds, so a mean or a pairing that took it in would show."""
    finals = {
        ("adamw", 1e-3, 0): 1.90,
        ("adamw", 3e-3, 0): 1.50,
        ("soap_f10", 1e-3, 0): 1.85,
        ("soap_f10", 3e-3, 0): 1.40,
    }
    finals |= {("adamw", 3e-3, s): v for s, v in zip((1, 2, 3), SEED_LEVELS)}
    finals |= {("soap_f10", 3e-3, s): v + g for s, v, g in zip((1, 2, 3), SEED_LEVELS, STEADY_GAIN)}
    runs = []
    for (variant, lr, seed), final in finals.items():
        optimizer, extra = ("adamw", {}) if variant == "adamw" else ("soap", {"precondition_frequency": 10})
        config = syn.base_config("exp", optimizer, seed, lr, 400, **extra)
        config["sweep_keys"] = [f"variant={variant}", "optimizer.lr"]
        evals = [(step, step * 0.1, final + 20.0 / step - 0.05) for step in (100, 200, 300, 400)]
        syn.write_run(root, "exp", f"{variant}-lr{lr}-s{seed}", config, evals)
        runs.append(
            {
                "arm": variant,
                "lr": float(f"{lr:.6g}"),
                "seed": seed,
                "stage": "grid" if seed == 0 else "seed",
                "role": "tune" if seed == 0 else "report",
            }
        )
    arm = {
        "yaml_lr": 1e-3,
        "grid": [1e-3, 3e-3],
        "results": {"0.001": 1.9, "0.003": 1.5},
        "extensions": 0,
        "extended": None,
        "best_lr": 3e-3,
        "still_on_edge": False,
        "tuning": "grid",
        "tuned_from": None,
        "tune_seeds": [0],
        "seeds": [1, 2, 3],
        "flags": [],
    }
    return {
        "experiment": "exp",
        "protocol": {
            "points": 2,
            "factor": 3.16,
            "tune_seeds": [0],
            "report_seeds": [1, 2, 3],
            "seeds": 3,
            "max_extensions": 3,
        },
        "arms": {"adamw": arm, "soap_f10": arm},
        "runs": runs,
    }


def test_with_a_tuning_log_roles_come_from_it_and_no_tuning_seed_enters_a_reported_mean(tmp_path: Path) -> None:
    import json

    root = tmp_path / "results"
    record = _tuned_store(root)
    (root / "runs" / "exp" / "tuning.json").write_text(json.dumps(record))
    out = tmp_path / "rep"
    assert _cli(["--experiment", "exp", "--results-dir", str(root), "--out", str(out), "--no-figures"]) == 0
    seeds = pd.read_csv(out / "per_seed.csv")
    tuned = {(r["arm"], r["seed"]) for r in record["runs"] if r["role"] == "tune"}
    arms = {"adamw": "adamw", "soap f=10": "soap_f10"}
    assert {
        (arms[a], s) for a, s in seeds.loc[seeds["role"] == "tune", ["arm", "seed"]].itertuples(index=False)
    } == tuned
    assert len(seeds) == len(record["runs"]) and set(seeds.loc[seeds["role"] == "report", "seed"]) == {1, 2, 3}
    means = pd.read_csv(out / "report.csv").set_index("arm")["final_mean"]
    assert means["adamw"] == pytest.approx(np.mean(SEED_LEVELS[:3]), abs=1e-4)  # seed 0's 1.50 would pull it down
    compared = pd.read_csv(out / "comparisons.csv").set_index("arm")
    reported = seeds[seeds["role"] == "report"].pivot(index="seed", columns="arm", values="final")
    assert compared.loc["soap f=10", "n_pairs"] == 3
    assert compared.loc["soap f=10", "p_value"] == pytest.approx(
        stats.ttest_rel(reported["soap f=10"], reported["adamw"]).pvalue
    )


def test_a_tuning_log_whose_runs_lack_a_field_is_one_error_line(tmp_path: Path, capsys) -> None:
    import json

    root = tmp_path / "results"
    record = _tuned_store(root)
    del record["runs"][0]["role"]
    (root / "runs" / "exp" / "tuning.json").write_text(json.dumps(record))
    out = tmp_path / "rep"
    assert _cli(["--experiment", "exp", "--results-dir", str(root), "--out", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("report: error: ") and "tuning.json" in err[0] and not out.exists()


def test_tuning_section_reads_the_protocol_and_flags_sit_beside_the_verdicts(tmp_path: Path) -> None:
    from soapbench.report.render import comparison_rows

    root = tmp_path / "results"
    record = _tuned_store(root)
    edge = "best lr on the upper edge after 3 extensions (the cap): the optimum may lie outside the grid"
    record["arms"] = {
        "adamw": {
            **record["arms"]["adamw"],
            "grid": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
            "extensions": 3,
            "extended": "up",
            "still_on_edge": True,
            "flags": [edge],
        },
        "soap_f10": {
            **record["arms"]["adamw"],
            "grid": [],
            "results": {},
            "tuning": "borrowed",
            "tuned_from": "adamw",
            "tune_seeds": [],
            "flags": ["not tuned: takes adamw's tuned lr"],
        },
    }
    analysis = analyze(load_experiment(root, "exp"), tuning={"exp": record})
    report, table = markdown(analysis, "cmd", "now", None, [])
    assert "extended by one point" not in report
    assert "scored by the mean over tuning seed(s) 0;" in report and "report seed(s) 1, 2, 3" in report
    assert "extended 3 time(s), the last up" in report and "Still on an edge after 3 extension(s) (the cap)" in report
    assert "`soap_f10`: **not tuned (borrowed)**: takes `adamw`'s tuned lr 0.003; report seeds 1, 2, 3" in report
    # beside the verdicts, in the main table printed to stdout too, not only in the tuning section
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert f"baseline; ⚠ {edge}" in rows["adamw"]
    assert "; ⚠ not tuned: takes adamw's tuned lr" in rows["soap f=10"] and "**" in rows["soap f=10"]
    w = analysis.workloads[0]
    assert [r["tuning_flags"] for r in comparison_rows(w, None)] == ["not tuned: takes adamw's tuned lr"]
    # a log from before the flags field: read from still_on_edge and tuned_from
    for arm in record["arms"].values():
        del arm["flags"]
    old = analyze(load_experiment(root, "exp"), tuning={"exp": record}).workloads[0]
    assert [old.tuning_flags(o) for o in old.optimizers.values()] == [
        ["best lr still on an edge of its grid: the optimum may lie outside the grid"],
        ["not tuned: takes adamw's tuned lr"],
    ]


def test_the_paper_comparison_fits_the_same_budget_points_as_the_arm_without_its_tuning_seed(tmp_path: Path) -> None:
    """(c)'s report once read SOAP's time saving from a fit that took in the tuning seed's run at the chosen lr (an
    extra point at the full budget, with its own seconds) while the arm's own fit left it out."""
    import json

    from soapbench.report.analysis import pairwise, read_tuning_log

    root = tmp_path / "results"
    record = _tuned_store(root)
    (root / "runs" / "exp" / "tuning.json").write_text(json.dumps(record))
    for seed, level, gain in zip((1, 2, 3), SEED_LEVELS[:3], STEADY_GAIN[:3], strict=True):
        for steps in (200, 300):  # shortened schedules of SOAP's best lr on the report seeds
            final = level + gain + 0.3 * (400 - steps) / 400
            config = syn.base_config("exp", "soap", seed, 3e-3, steps, precondition_frequency=10)
            config["sweep_keys"] = ["variant=soap_f10", "optimizer.lr"]
            evals = [(s, s * 0.1, final + 20.0 / s - 20.0 / steps) for s in (steps // 2, steps)]
            syn.write_run(root, "exp", f"soap_f10-lr0.003-N{steps}-s{seed}", config, evals)
    analysis = analyze(load_experiment(root, "exp"), tuning={"exp": read_tuning_log(root, "exp")})
    (workload,) = analysis.workloads
    soap = workload.optimizers["soap f=10"]
    assert [p.steps for p in soap.schedule.points] == [200, 300, 400]
    fitted = pairwise(workload, "soap", "adamw")["fit"]
    assert fitted.points == soap.schedule.points
    sources = [source for point in fitted.points for source in point.sources]
    assert len(sources) == 9 and not any(source.endswith("-s0") for source in sources)
