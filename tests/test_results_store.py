"""The local results store: atomic files, readable after a kill, non-finite numbers kept visible."""

from __future__ import annotations

import json

import pytest

from soapbench.results import RunStore, atomic_write_text


def test_summary_is_written_atomically_and_keeps_non_finite_values(tmp_path) -> None:
    store = RunStore(tmp_path / "run")
    store.write_summary({"status": "diverged", "final_val_loss": float("inf"), "best_val_loss": float("nan")})
    summary = json.loads(store.summary_path.read_text())
    assert summary == {"status": "diverged", "final_val_loss": "inf", "best_val_loss": "nan"}
    assert [p.name for p in store.run_dir.iterdir()] == ["summary.json"], "no temp files left behind"


def test_unknown_status_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="status"):
        RunStore(tmp_path).write_summary({"status": "finished-ish"})


def test_a_record_cut_short_by_a_kill_is_ignored(tmp_path) -> None:
    store = RunStore(tmp_path)
    store.append_metrics({"step": 1, "train/loss": 2.0})
    store.append_metrics({"step": 2, "train/loss": 1.5})
    with open(store.metrics_path, "a") as handle:
        handle.write('{"step": 3, "train/lo')
    assert [r["step"] for r in store.read_metrics()] == [1, 2]


def test_truncate_drops_records_after_the_checkpoint(tmp_path) -> None:
    store = RunStore(tmp_path)
    for step in range(5):
        store.append_metrics({"step": step})
    store.truncate_metrics(3)
    assert [r["step"] for r in store.read_metrics()] == [0, 1, 2]
    store.append_metrics({"step": 3})
    assert [r["step"] for r in store.read_metrics()] == [0, 1, 2, 3]


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_runs_of_another_world_size_are_another_configuration_in_the_report(tmp_path) -> None:
    import synthetic_runs as syn

    from soapbench.report.store import config_key, load_experiment, swept_keys

    evals = [(10, 1.0, 2.0), (20, 2.0, 1.9)]
    for seed, world_size in ((0, 1), (1, 1), (2, 2)):
        syn.write_run(
            tmp_path,
            "exp",
            f"adamw-s{seed}",
            syn.base_config("exp", "adamw", seed, 1e-3, 20),
            evals,
            summary_extra={"world_size": world_size, "processes": world_size},
        )
    runs = {run.name: run for run in load_experiment(tmp_path, "exp")}
    assert config_key(runs["adamw-s0"]) == config_key(runs["adamw-s1"])
    assert config_key(runs["adamw-s2"]) != config_key(runs["adamw-s0"]), "2 processes round differently: not pooled"
    assert swept_keys(runs.values()) == ["world_size"], "and the report names what sets them apart"
