"""The report over a hand-built results store: loading, statuses, hand-computed targets, CLI outputs, bad input."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import synthetic_runs as syn

from soapbench.report.analysis import analyze, fairness_warnings
from soapbench.report.curves import crossing
from soapbench.report.figures import latest_image
from soapbench.report.profiles import performance_ratios, times_to_target
from soapbench.report.reference import load_reference
from soapbench.report.store import load_experiment, swept_keys

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "results" / "reference"
STEPS = (100, 200, 300, 400)


def _evals(losses, seconds):
    return list(zip(STEPS, seconds, losses))


def _write(root: Path, exp: str, name: str, opt: str, seed: int, lr: float, evals, **kw) -> Path:
    extra = {"precondition_frequency": 10} if opt in ("soap", "shampoo") else {}
    return syn.write_run(root, exp, name, syn.base_config(exp, opt, seed, lr, 400, **extra), evals, **kw)


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A store with known curves and every kind of broken run. Hand-computed facts:

    AdamW lr 1e-3 (best): mean curve 4, 3.1, 2.6, 2.1 at 100..400 steps, mean seconds 11, 21, 31, 41
      -> target 2.1, reached at step 400 / 41 s.  AdamW lr 3e-3 ends at 2.5.
    SOAP lr 1e-3: mean curve 3.5, 2.6, 2.0, 1.8, seconds 15, 30, 45, 60 -> crosses 2.1 at
      200 + 100·(2.6−2.1)/(2.6−2.0) = 283.33 steps and 30 + 15·5/6 = 42.5 s.
    SOAP lr 1e-2: one seed ends at 1.5 but the other diverged -> never "best".
    """
    root = tmp_path / "results"
    w = lambda *a, **k: _write(root, "exp", *a, **k)  # noqa: E731
    w("adamw_lr1e-3_s0", "adamw", 0, 1e-3, _evals([4, 3, 2.5, 2.0], [10, 20, 30, 40]))
    w("adamw_lr1e-3_s1", "adamw", 1, 1e-3, _evals([4, 3.2, 2.7, 2.2], [12, 22, 32, 42]))
    w("adamw_lr1e-3_s2_killed", "adamw", 2, 1e-3, _evals([4, 3.1], [10, 20]), status="running", truncate_last_line=True)
    w("adamw_lr3e-3_s0", "adamw", 0, 3e-3, _evals([4, 3.4, 2.9, 2.5], [10, 20, 30, 40]))
    w("adamw_lr3e-3_s1", "adamw", 1, 3e-3, _evals([4, 3.4, 2.9, 2.5], [10, 20, 30, 40]))
    w("soap_lr1e-3_s0", "soap", 0, 1e-3, _evals([3.5, 2.5, 1.9, 1.7], [15, 30, 45, 60]))
    w("soap_lr1e-3_s1", "soap", 1, 1e-3, _evals([3.5, 2.7, 2.1, 1.9], [15, 30, 45, 60]))
    w("soap_lr1e-2_s0", "soap", 0, 1e-2, _evals([3.0, 2.0, 1.6, 1.5], [15, 30, 45, 60]))
    w("soap_lr1e-2_s1", "soap", 1, 1e-2, [(100, 15, 3.0), (200, 30, math.nan)], status="diverged", diverged_step=150)
    w("soap_lr3e-3_s0_config_only", "soap", 0, 3e-3, None)
    w("shampoo_lr1e-3_s0", "shampoo", 0, 1e-3, [(100, 20, 4.2)], status="failed", error="RuntimeError: out of memory")
    # summary says completed, but the final loss is inf: reclassified as diverged
    w("muon_lr2e-2_s0", "muon", 0, 2e-2, _evals([4, 3.9, math.inf, math.inf], [10, 20, 30, 40]))
    # no config.yaml at all: cannot be attributed to a configuration, but is still counted and listed
    (root / "runs" / "exp" / "orphan").mkdir()
    (root / "runs" / "exp" / "orphan" / "metrics.jsonl").write_text('{"step": 1, "event": "train"}\n')
    return root


def test_crossing_interpolates_piecewise_linear_curves() -> None:
    curve = pd.DataFrame({"step": [100, 200, 300, 400], "seconds": [12, 25, 41, 55], "value": [4, 3, 2.5, 2.0]})
    assert crossing(curve, 2.75) == pytest.approx((250.0, 33.0))  # halfway between 200 and 300
    assert crossing(curve, 3.6) == pytest.approx((140.0, 12 + 0.4 * 13))
    assert crossing(curve, 2.0) == pytest.approx((400.0, 55.0))  # reached exactly at the last eval
    assert crossing(curve, 5.0) == pytest.approx((100.0, 12.0))  # already below at the first eval
    assert crossing(curve, 1.9) is None


def test_store_statuses_and_partial_runs(store: Path) -> None:
    runs = {r.name: r for r in load_experiment(store, "exp")}
    assert len(runs) == 13
    assert runs["orphan"].status == "unreadable" and "no config.yaml" in runs["orphan"].problems
    assert runs["adamw_lr1e-3_s2_killed"].status == "running"
    assert any("truncated" in p for p in runs["adamw_lr1e-3_s2_killed"].problems)
    assert len(runs["adamw_lr1e-3_s2_killed"].metrics) == 3  # the half line is dropped, the rest kept
    assert runs["soap_lr3e-3_s0_config_only"].status == "no_summary"
    assert runs["soap_lr3e-3_s0_config_only"].metrics.empty
    assert runs["shampoo_lr1e-3_s0"].status == "failed"
    assert runs["soap_lr1e-2_s1"].status == "diverged"
    assert runs["muon_lr2e-2_s0"].status == "diverged"
    assert "final_val_loss is inf" in runs["muon_lr2e-2_s0"].problems[0]
    adamw = [r for r in runs.values() if r.optimizer == "adamw"]
    assert swept_keys(adamw) == ["optimizer.lr"]  # seed, paths and logger are ignored


def test_analysis_matches_hand_computed_values(store: Path) -> None:
    (w,) = analyze(load_experiment(store, "exp")).workloads
    adamw, soap = w.optimizers["adamw"], w.optimizers["soap f=10"]
    assert w.target == pytest.approx(2.1)
    assert adamw.best.value("optimizer.lr") == 1e-3 and adamw.best.n == 2
    assert adamw.best.std == pytest.approx(math.sqrt(0.02))
    assert (adamw.steps_to_target, adamw.seconds_to_target) == pytest.approx((400.0, 41.0))
    # lr 1e-2 has the lowest surviving loss (1.5) but a diverged seed: it must not win
    assert soap.best.value("optimizer.lr") == 1e-3
    assert (soap.best.mean, soap.best.std) == pytest.approx((1.8, math.sqrt(0.02)))
    assert soap.steps_to_target == pytest.approx(200 + 100 * 0.5 / 0.6)
    assert soap.seconds_to_target == pytest.approx(30 + 15 * 0.5 / 0.6)
    assert soap.efficiency_steps == pytest.approx(400 / (200 + 100 * 0.5 / 0.6))
    assert soap.efficiency_time == pytest.approx(41 / (30 + 15 * 0.5 / 0.6))
    assert soap.counts["diverged"] == 1 and soap.counts["no_summary"] == 1
    assert w.optimizers["shampoo f=10"].best.curve is None and w.optimizers["shampoo f=10"].counts["failed"] == 1
    assert w.optimizers["muon"].best.diverged == 1
    warnings = fairness_warnings(w)
    assert any(n.startswith("adamw: 1 seed(s) of the best configuration did not complete") for n in warnings)
    assert not any("devices" in n for n in warnings)  # every synthetic run is on "cpu"
    # SOAP tried lr 1e-3, 3e-3 (config only) and 1e-2 and is best at the smallest; AdamW tried only two
    assert [n.split(":")[0] for n in warnings if "edge" in n] == ["soap f=10"]


def test_explicit_target(store: Path) -> None:
    (w,) = analyze(load_experiment(store, "exp"), target=2.6).workloads
    assert w.target_source == "given with --target"
    assert (w.optimizers["adamw"].steps_to_target, w.optimizers["adamw"].seconds_to_target) == pytest.approx((300, 31))
    assert (w.optimizers["soap f=10"].steps_to_target, w.optimizers["soap f=10"].seconds_to_target) == pytest.approx(
        (200, 30)
    )
    assert w.optimizers["soap f=10"].efficiency_steps == pytest.approx(1.5)


def _cli(args: list[str]) -> int:
    """scripts/report.py's main(), loaded from its path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("report_cli", REPO / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args)


def test_cli_writes_every_output_and_shows_broken_runs(store: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "reports" / "exp"
    assert _cli(["--experiment", "exp", "--results-dir", str(store), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "| soap f=10 |" in stdout and "283" in stdout and "diverged (1/1 seeds)" in stdout
    for name in (
        "report.md",
        "report.csv",
        "configurations.csv",
        "sources.json",
        "loss_curves.png",
        "lr_sensitivity.png",
        "efficiency.png",
        "train_loss.png",
    ):
        assert (out / name).stat().st_size > 0, name
    # one workload: no performance profile (a fraction of one workload), and the report says why
    assert not (out / "performance_profile.png").exists()
    assert "No performance profile" in (out / "report.md").read_text()
    for png in out.glob("*.png"):
        sidecar = json.loads((out / f"{png.stem}.sources.json").read_text())
        assert sidecar["experiment"] == "exp" and sidecar["runs"], png.name
    report = (out / "report.md").read_text()
    for needle in (
        "diverged at step 150",
        "RuntimeError: out of memory",
        "running (live or killed)",
        "no_summary",
        "| orphan | unknown | unreadable |",
        "1 diverged",
        "1 failed",
        "Target: **2.1000**",
    ):
        assert needle in report, needle
    sources = json.loads((out / "sources.json").read_text())
    assert len(sources["runs"]) == 13
    assert sources["status_counts"] == {
        "completed": 7,
        "diverged": 2,
        "failed": 1,
        "running": 1,
        "interrupted": 0,
        "no_summary": 1,
        "unreadable": 1,
    }
    assert {r["config_hash"] for r in sources["runs"] if r["status"] == "completed"} >= {"hash-soap_lr1e-3_s0"}
    csv = pd.read_csv(out / "report.csv").set_index("optimizer")
    assert csv.loc["soap", "steps_to_target"] == pytest.approx(200 + 100 * 0.5 / 0.6)
    assert csv.loc["soap", "runs_diverged"] == 1
    # a second report replaces the first in place (its figures too: this one draws none) and leaves no temporary
    # directories behind
    assert _cli(["--experiment", "exp", "--results-dir", str(store), "--out", str(out), "--no-figures"]) == 0
    assert not list(out.glob("*.png")) and (out / "report.md").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["exp"]


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        ("store", ["--experiment", "nope"], "no such experiment 'nope'"),
        ("empty", ["--experiment", "exp"], "no run store"),
        ("missing", ["--experiment", "exp"], "does not exist"),
        ("store", ["--experiment", "exp", "--reference", "nope"], "no reference file"),
        ("store", ["--experiment", "exp", "--reference", "soap_lm:nope"], "no setting 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(store: Path, tmp_path: Path, capsys, make, args, message) -> None:
    results = {"store": store, "empty": tmp_path / "empty", "missing": tmp_path / "missing"}[make]
    if make == "empty":
        results.mkdir()
    out = tmp_path / "out" / "report"
    rc = _cli([*args, "--results-dir", str(results), "--out", str(out), "--reference-dir", str(REFERENCE_DIR)])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not out.parent.exists()


def test_wandb_source_unavailable_is_one_line(store: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, whatever is installed
    out = tmp_path / "out" / "report"
    args = ["--experiment", "exp", "--wandb-project", "me/soapbench", "--results-dir", str(store), "--out", str(out)]
    rc = _cli(args)
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "report: error: --wandb-project needs the wandb package, which is not installed"
    assert not out.parent.exists()


def test_reference_files_hold_the_paper_specs_numbers() -> None:
    registered = {"adamw", "adafactor", "shampoo", "soap", "soap_muon", "muon", "kl_soap", "kl_shampoo"}
    for path in sorted(REFERENCE_DIR.glob("*.yaml")):
        ref = load_reference(path.stem, REFERENCE_DIR)
        for entry in ref.entries:
            assert entry.optimizer in registered and entry.source and entry.tag
        # Every paper comparison states what the paper concludes, its scale, a legend of its source tags, and an
        # equivalence margin with its reason; every claim the regime in which a run can test it.
        assert ref.claims and ref.legend and ref.scale, path.name
        assert ref.margin is not None and ref.margin.value > 0 and ref.margin.reason, path.name
        for claim in ref.claims:
            assert {name.split()[0] for name in claim.names} <= registered and claim.text and claim.source, claim
            assert claim.setting in ref.settings, claim
            assert claim.regime and claim.regime.get("why") and len(claim.regime) >= 3, claim
    nano = load_reference("whitening_nanogpt:paper", REFERENCE_DIR)
    got = {(e.optimizer, e.match.get("precondition_frequency")): e.value for e in nano.entries}
    assert got == {
        ("adamw", None): 1.4632,
        ("soap", 1): 1.4654,
        ("soap", 10): 1.4724,
        ("shampoo", 1): 1.4595,
        ("shampoo", 10): 1.4703,
    }
    color = load_reference("whitening_colorization:paper", REFERENCE_DIR)
    assert color.metric == "val/mse"
    assert {e.optimizer: e.value for e in color.entries} == {"adamw": 0.0029, "soap": 0.0029, "shampoo": 0.0035}
    muon = load_reference("soap_muon:modded_nanogpt_2M", REFERENCE_DIR)
    assert sorted(e.value for e in muon.entries if e.quantity == "final_loss") == [3.2448, 3.2472, 3.2621]
    assert load_reference("kl_methods", REFERENCE_DIR).entries == ()  # paper_specs has no KL numbers


def test_reference_columns_and_frequency_ablation(tmp_path: Path, capsys) -> None:
    root = tmp_path / "results"
    finals = {("adamw", None): 1.50, ("soap", 1): 1.48, ("soap", 10): 1.49, ("shampoo", 1): 1.47, ("shampoo", 10): 1.52}
    for (opt, freq), final in finals.items():
        extra = {"precondition_frequency": freq} if freq else {}
        config = syn.base_config("gw", opt, 0, 1e-3, 400, **extra)
        losses = [final + 1.5, final + 0.6, final + 0.2, final]
        syn.write_run(root, "gw", f"{opt}_f{freq}", config, _evals(losses, [10, 20, 30, 40]))
    out = tmp_path / "rep"
    args = [
        "--experiment",
        "gw",
        "--results-dir",
        str(root),
        "--out",
        str(out),
        "--reference",
        "whitening_nanogpt:paper",
        "--reference-dir",
        str(REFERENCE_DIR),
    ]
    assert _cli(args) == 0
    stdout = capsys.readouterr().out
    assert "1.4654 (precondition_frequency=1) [paper]" in stdout  # SOAP's best f is 1: the paper's f=1 number
    assert "1.4595 (precondition_frequency=1) [paper]" in stdout
    assert "warning" not in stdout  # a best f at the edge (f = 1) is not a tuning gap
    report = (out / "report.md").read_text()
    assert "| paper | soap (precondition_frequency=10) | final_loss | 1.4724 | 1.49 |" in report
    assert (out / "frequency_ablation.png").stat().st_size > 0


def _png(color: tuple[float, float, float]) -> bytes:
    buffer = io.BytesIO()
    plt.imsave(buffer, np.ones((8, 8, 3)) * np.array(color), format="png")
    return buffer.getvalue()


def test_colorization_image_grid_uses_latest_image(tmp_path: Path) -> None:
    root = tmp_path / "results"
    dirs = []
    for opt, final in (("adamw", 0.0031), ("soap", 0.0030)):
        config = syn.base_config("color", opt, 0, 1e-3, 400)
        config["data"] = {"name": "places_small", "kind": "colorization"}
        evals = _evals([0.01, 0.005, 0.004, final], [10, 20, 30, 40])
        dirs.append(
            syn.write_run(
                root, "color", opt, config, evals, metric="val/mse", images={100: _png((1, 0, 0)), 400: _png((0, 0, 1))}
            )
        )
    runs = load_experiment(root, "color")
    assert latest_image(runs[0])[0] == 400
    out = tmp_path / "rep"
    args = [
        "--experiment",
        "color",
        "--results-dir",
        str(root),
        "--out",
        str(out),
        "--reference",
        "whitening_colorization:paper",
        "--reference-dir",
        str(REFERENCE_DIR),
    ]
    assert _cli(args) == 0
    assert (out / "images.png").stat().st_size > 0
    sidecar = json.loads((out / "images.sources.json").read_text())
    assert sorted(sidecar["runs"]) == sorted(str(d) for d in dirs)
    report = (out / "report.md").read_text()
    assert "metric: `val/mse`" in report  # the reference's metric is used when the runs log it
    assert "| paper | soap | final_loss | 0.0029 | 0.003 |" in report


def test_two_experiments_are_two_workloads_of_one_profile(tmp_path: Path) -> None:
    root = tmp_path / "results"
    for exp, soap_speed in (("a", 2.0), ("b", 0.5)):
        for opt, speed in (("adamw", 1.0), ("soap", soap_speed)):
            losses = [3.0, 2.0, 1.5, 1.0] if speed == 1.0 else ([3.0, 1.0, 0.9, 0.8] if speed > 1 else [3, 2.5, 2, 1.8])
            syn.write_run(root, exp, opt, syn.base_config(exp, opt, 0, 1e-3, 400), _evals(losses, [10, 20, 30, 40]))
    (w_a, w_b) = analyze(load_experiment(root, "a") + load_experiment(root, "b")).workloads
    assert [w_a.workload, w_b.workload] == ["a:nanogpt/shakespeare_char", "b:nanogpt/shakespeare_char"]
    ratios = performance_ratios(times_to_target(analyze(load_experiment(root, "a") + load_experiment(root, "b"))))
    assert ratios.loc[w_a.workload, "adamw"] > 1.0 and ratios.loc[w_a.workload, "soap"] == 1.0
    assert ratios.loc[w_b.workload, "adamw"] == 1.0 and ratios.loc[w_b.workload, "soap"] == math.inf
    out = tmp_path / "rep"  # figures are covered by the single-experiment test; tables only here
    assert _cli(["--experiment", "a", "b", "--results-dir", str(root), "--out", str(out), "--no-figures"]) == 0
    csv = pd.read_csv(out / "report.csv")
    assert set(csv["workload"]) == {w_a.workload, w_b.workload}
    assert _cli(["--experiment", "a", "b", "--results-dir", str(root), "--out", str(out), "--target", "1.0"]) == 2
