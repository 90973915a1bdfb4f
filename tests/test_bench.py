"""The benchmark tools: exact state-memory formulas, honest step timing, peers that degrade to a message, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from soapbench.bench import catalog, memory, peers, step_timing, theory, throughput, train_step
from soapbench.bench.shapes import GradientBank, param_infos, split_by_roles, trainable_params
from tests.conftest import REPO

TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.seq_len=16"]


@pytest.fixture(scope="module")
def registered() -> list[str]:
    names, _ = catalog.discover_optimizers()
    return names


class Zoo(nn.Module):
    """Every shape family the formulas branch on: embedding, matrix + bias, conv kernel, a (1, n) row, head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.fc = nn.Linear(8, 24)
        self.conv = nn.Conv2d(4, 6, 3, bias=False)
        self.row = nn.Parameter(torch.randn(1, 12))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(24, 5, bias=False)


def test_formulas_match_the_paper_for_one_matrix():
    m, n = 48, 16  # SOAP paper §7.2-7.3 per m×n layer, less the stored gradient
    assert sum(theory.adamw_state([(m, n)], {}).values()) == 2 * m * n
    soap = {"max_precond_dim": 10000, "precondition_1d": False, "merge_dims": False}
    assert sum(theory.soap_state([(m, n)], soap).values()) == 2 * m * m + 2 * n * n + 2 * m * n
    one_sided = {"projection_type": "std", "max_precond_dim": 10000}
    assert sum(theory.soap_muon_state([(m, n)], one_sided).values()) == 2 * n * n + 2 * m * n
    assert sum(theory.soap_state([(20000, n)], soap).values()) == 2 * n * n + 2 * 20000 * n  # side > mpd: identity
    assert theory.theoretical_elements("a_users_drop_in", [(m, n)], {}) is None


def test_theoretical_state_equals_measured_bytes_exactly(registered):
    with_formula = [name for name in registered if name in theory.THEORETICAL_STATE]
    assert {"adamw", "muon", "soap_muon", "kl_soap", "kl_shampoo", "adafactor"} <= set(with_formula)
    for name in with_formula:
        torch.manual_seed(0)
        model = Zoo()
        setup = catalog.optimizer_setup(name)
        optimizer = setup.build(model)
        bank = GradientBank.for_model(model, sets=1)
        params = trainable_params(model)
        for step in range(2):
            bank.assign(params, step)
            optimizer.step()
        parts = memory.measure_parts(optimizer, params)
        main, rest = split_by_roles(param_infos(model), setup.main_roles)
        main_theory = theory.theoretical_elements(name, [i.shape for i in main], setup.effective_hparams())
        rest_theory = theory.theoretical_elements(
            setup.companion_name, [i.shape for i in rest], setup.effective_companion_hparams()
        )
        assert parts["main"].arrays == 4 * sum(main_theory.values()), name
        assert parts["companion"].arrays == (4 * sum(rest_theory.values()) if rest else 0), name


def test_memory_rows_agree_across_real_meta_and_depth_extrapolation(registered):
    cfg = catalog.preset_config("nanogpt_char_cpu", TINY)["model"]
    for name in [n for n in ("adamw", "soap", "kl_soap", "adafactor_torch") if n in registered]:
        setup = catalog.optimizer_setup(name)
        real = memory.memory_row(setup, cfg)
        forced = memory.memory_row(setup, cfg, materialize_limit=0)  # meta, or extrapolated where meta fails
        assert real.method.startswith("real") and not forced.method.startswith("real")
        assert real.error is None and forced.error is None, (real.error, forced.error)
        assert real.measured_total == forced.measured_total == real.theoretical_total, name
        assert real.adamw_bytes == 2 * 4 * (real.params_main + real.params_companion)
    if "adafactor_torch" in registered:  # its step calls .item(), so meta fails and depth extrapolation takes over
        row = memory.memory_row(catalog.optimizer_setup("adafactor_torch"), cfg, materialize_limit=0)
        assert "extrapolated" in row.method


class SleepyOptimizer(torch.optim.Optimizer):
    """Takes a known time per step and records which gradient it saw."""

    def __init__(self, params, seconds: float):
        super().__init__(params, {})
        self.seconds, self.seen = seconds, []

    def step(self, closure=None):
        self.seen.append(float(self.param_groups[0]["params"][0].grad.flatten()[0]))
        time.sleep(self.seconds)


class SlowBank(GradientBank):
    def assign(self, params, index):
        time.sleep(0.1)  # if assignment leaked into the timing, every sample would exceed 0.1 s
        super().assign(params, index)


def test_timing_reports_every_sample_and_excludes_gradient_assignment():
    param = nn.Parameter(torch.zeros(3))
    bank = SlowBank([(3,)], sets=2, seed=1)
    plain = SleepyOptimizer([param], 0.005)
    periodic_param = nn.Parameter(torch.zeros(3))
    periodic = SleepyOptimizer([periodic_param], 0.005)
    contestants = [
        step_timing.Contestant("plain", "ours", "plain", plain, [param], steps=5, warmup=1),
        step_timing.Contestant("periodic", "ours", "periodic", periodic, [periodic_param],
                               steps=step_timing.window_length(5, 4), warmup=1, frequency=4),
    ]  # fmt: skip
    step_timing.run_interleaved(contestants, bank, torch.device("cpu"))
    assert [len(c.samples) for c in contestants] == [5, 8]  # the periodic window is rounded up to 2 periods
    assert contestants[1].refreshes == 2
    for contestant in contestants:
        assert all(0.005 <= sample < 0.1 for sample in contestant.samples), contestant.samples
    # Calls alternate between the two gradient sets: the step saw set k mod 2 at its k-th call.
    first = [float(bank.sets[k % 2][0][0]) for k in range(6)]
    assert plain.seen == pytest.approx(first)
    stats = contestants[0].stats()
    assert stats.n == 5 and stats.min <= stats.median <= stats.max


def test_missing_peer_library_gives_a_clear_cell(monkeypatch, registered):
    for library in peers.PEER_LIBRARIES:
        monkeypatch.setitem(peers.PEER_LIBRARIES, library, f"{library.replace('-', '_')}_absent_for_test")
    statuses = peers.library_status()
    assert statuses and all(status.startswith("not installed") for status in statuses.values())
    cfg = catalog.preset_config("nanogpt_char_cpu", TINY)["model"]
    from soapbench.bench.shapes import build_preset_model

    model = build_preset_model(cfg, "cpu")
    setups = [catalog.optimizer_setup("muon")]
    contestants = step_timing.build_contestants(setups, model, steps=2, warmup=1, with_peers=True)
    step_timing.run_interleaved(contestants, GradientBank.for_model(model), torch.device("cpu"))
    ours, *others = contestants
    assert ours.error is None and len(ours.samples) == 2
    assert others and all(c.error.startswith("not installed (pip install -e '.[peers]')") for c in others)
    from soapbench.bench.report import timing_markdown

    rendered = timing_markdown({"protocol": "", "contestants": [c.summary() for c in contestants]})
    assert "not installed" in rendered


def test_installed_peers_build_and_step_on_our_groups(monkeypatch, registered):
    available = [spec for spec in peers.PEERS if peers.peer_unavailable_reason(spec.library) is None]
    if not available:
        pytest.skip("no peer library installed (pip install -e '.[peers]')")
    if peers.peer_unavailable_reason("heavyball") is None:
        import heavyball.utils

        monkeypatch.setattr(heavyball.utils, "compile_mode", None)  # eager here: compiling takes minutes on CPU
    cfg = catalog.preset_config("nanogpt_char_cpu", TINY)["model"]
    from soapbench.bench.shapes import build_preset_model

    model = build_preset_model(cfg, "cpu")
    bank = GradientBank.for_model(model)
    for spec in [s for s in available if s.ours in registered]:
        contestant = step_timing.make_contestant(
            spec.label, spec.library, spec.ours, peers.peer_builder(spec, catalog.optimizer_setup(spec.ours)), model,
            steps=2, warmup=1, frequency=None,
        )  # fmt: skip
        step_timing.run_interleaved([contestant], bank, torch.device("cpu"))
        assert contestant.error is None and len(contestant.samples) == 2, (spec.label, contestant.error)
        assert all(torch.isfinite(p).all() for p in contestant.params), spec.label


def test_throughput_summary_aggregates_step_records():
    records = [{"event": "train", "train/step_seconds": 9.0, "train/optimizer_seconds": 1.0, "train/throughput": 1.0}]
    records += [
        {"event": "train", "train/step_seconds": s, "train/optimizer_seconds": s / 4, "train/throughput": 100 / s}
        for s in (1.0, 3.0)
    ] + [{"event": "eval", "val/loss": 1.0}]
    summary = throughput.summarise_metrics(records, warmup=1)
    assert summary["steps_measured"] == 2 and summary["tokens_per_step"] == pytest.approx(100)
    assert summary["tokens_per_second"] == pytest.approx(200 / 4.0)
    assert summary["optimizer_share"] == pytest.approx(0.25) and summary["mfu"] is None


def test_script_writes_report_with_metadata(tmp_path, registered):
    chosen = ",".join(name for name in ("adamw", "soap") if name in registered)
    overrides = [arg for item in TINY for arg in ("--override", item)]
    command = [
        sys.executable, str(REPO / "scripts" / "bench_optimizers.py"), "--model", "nanogpt_char_cpu", *overrides,
        "--optimizers", chosen, "--steps", "3", "--warmup", "1", "--threads", "1", "--no-peers",
        "--throughput-steps", "1", "--throughput-warmup", "1", "--throughput-batch-size", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [md_path] = tmp_path.glob("nanogpt_char_cpu_cpu_*.md")
    json_path = md_path.with_suffix(".json")
    report = json.loads(json_path.read_text())
    meta = report["metadata"]
    for field in ("command", "git_commit", "date", "timestamp_utc", "device", "threads", "versions"):
        assert meta[field] not in (None, ""), field
    assert meta["threads"] == 1 and "torch" in meta["versions"] and "python" in meta["versions"]
    expected = {"step_timing", "memory", "throughput"} | ({"soap_floor"} if "soap" in chosen else set())
    assert set(report["sections"]) == expected
    assert {c["label"] for c in report["sections"]["step_timing"]["contestants"]} == set(chosen.split(","))
    assert all(c["stats"]["n"] >= 3 for c in report["sections"]["step_timing"]["contestants"])
    throughput = report["sections"]["throughput"]["rows"]
    assert throughput and all(row["status"] == "completed" for row in throughput)
    text = md_path.read_text()
    assert "Step time" in text and "Optimizer-state memory" in text and meta["command"] in text
    assert "Optimizer-state memory" in result.stdout
    if "soap" in chosen:
        floor = report["sections"]["soap_floor"]
        assert floor["matrices"] > 0 and 0 < floor["per_step_seconds"] < floor["mean_seconds"]
        assert "SOAP's matmul floor" in text


def test_soap_floor_counts_only_preconditioned_matrices():
    from soapbench.bench.floor import soap_floor

    hparams = {"max_precond_dim": 64, "merge_dims": False, "precondition_1d": False, "data_format": "channels_first",
               "precondition_frequency": 4}  # fmt: skip
    floor = soap_floor([(32, 16), (32, 16), (16,), (8, 200), (4, 3, 3)], hparams, torch.device("cpu"), repeats=1)
    assert floor["matrices"] == 2 and floor["skipped_shapes"] == [[8, 200], [4, 3, 3]]
    assert floor["mean_seconds"] == floor["per_step_seconds"] + floor["per_refresh_seconds"] / 4 > 0


@pytest.mark.parametrize(
    ("script", "arguments", "named"),
    [
        ("bench_optimizers.py", ["--optimizers", "adamw,nosuch"], "nosuch"),
        ("bench_optimizers.py", ["--override", "model.n_layer=-1", "--optimizers", "adamw"], "n_layer"),
        ("bench_optimizers.py", ["--override", "model.nosuch=1"], "+model.nosuch"),
        ("optimizer_memory.py", ["--model", "nosuch"], "--model"),
        ("bench_optimizers.py", ["--train-step-ratio", "--ratio-variant", "nosuch+lr=1"], "--ratio-variant"),
    ],
)
def test_bad_arguments_get_one_line_and_write_nothing(tmp_path, script, arguments, named):
    out = tmp_path / "reports"
    extra = ["--out", str(out)] if script == "bench_optimizers.py" else ["--json", str(out / "memory.json")]
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *arguments, *extra],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and named in lines[0], result.stderr
    assert not out.exists()


def test_train_step_ratio_alternates_blocks_of_real_training_steps():
    overrides = [*TINY, "trainer.batch_size=2"]
    section = train_step.ratio_section(
        "nanogpt_char_cpu", ["soap"], overrides=overrides, device=torch.device("cpu"), warmup=1, blocks=2, threads=1,
    )  # fmt: skip
    rows = {row["optimizer"]: row for row in section["rows"]}
    assert list(rows) == ["adamw", "soap"]  # AdamW, the baseline, is always an arm
    assert section["block_steps"] == 10  # SOAP's f: every block holds one refresh
    for row in rows.values():
        assert row["step"]["n"] == 20 and row["step"]["mean"] > row["optimizer_step"]["mean"] > 0
    assert rows["adamw"]["ratio_mean"] == 1.0
    assert rows["soap"]["ratio_mean"] == pytest.approx(rows["soap"]["step"]["mean"] / rows["adamw"]["step"]["mean"])
    floor = section["soap_floor"]
    adamw = rows["adamw"]
    best = (adamw["step"]["mean"] - adamw["optimizer_step"]["mean"] + floor["mean_seconds"]) / adamw["step"]["mean"]
    assert floor["matrices"] > 0 and floor["best_possible_ratio"] == pytest.approx(best)
    assert section["load_average"]["cores"] >= 1  # the report says how loaded the machine was


def test_train_step_arms_start_from_the_same_weights_and_batches():
    arms = [train_step.build_arm("nanogpt_char_cpu", label, [*TINY, "trainer.batch_size=2"], torch.device("cpu"))
            for label in ("adamw", "soap", "soap+stack_shapes=false")]  # fmt: skip
    for arm in arms:
        arm.run(2, record=True)
    assert arms[0].losses[0] == arms[1].losses[0] == arms[2].losses[0]  # same init, same first batch
    assert arms[1].losses == arms[2].losses  # stacking changes no number
