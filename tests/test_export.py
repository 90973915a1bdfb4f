"""The store as parquet: one row per run and per record, read back by pandas and DuckDB with the same finals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import synthetic_runs as syn

from soapbench.report.export import MARKER, export_store
from soapbench.report.store import ReportError

REPO = Path(__file__).resolve().parents[1]


def _store(root: Path) -> dict[str, float]:
    finals = {}
    for optimizer, offset in (("adamw", 0.2), ("soap", 0.0)):
        for seed in (0, 1):
            config = syn.base_config("exp", optimizer, seed, 1e-3, 100)
            name = f"{optimizer}-s{seed}"
            loss = 1.5 + offset + 0.01 * seed
            syn.write_run(
                root,
                "exp",
                name,
                config,
                [(50, 5.0, loss + 0.3), (100, 10.0, loss)],
                summary_extra={"final_full_val_loss": loss, "machine_shared": seed == 1},
            )
            finals[name] = loss
    syn.write_run(
        root, "exp", "soap-killed", syn.base_config("exp", "soap", 2, 1e-3, 100), [(50, 5.0, 1.9)], status=None
    )
    return finals


def test_the_export_round_trips_through_pandas_and_duckdb(tmp_path: Path) -> None:
    finals = _store(tmp_path)
    out = tmp_path / "export"
    runs, records = export_store(tmp_path, out)
    assert (runs, records) == (5, 4 * 4 + 2)  # a train and an eval record per eval
    table = pd.read_parquet(out / "runs.parquet")
    read_back = table.dropna(subset=["summary.final_full_val_loss"]).set_index("run")["summary.final_full_val_loss"]
    assert read_back.to_dict() == finals
    assert table.set_index("run").loc["soap-killed", "status"] == "no_summary"
    assert table.set_index("run").loc["adamw-s1", "summary.machine_shared"]
    assert table.set_index("run").loc["adamw-s0", "config.optimizer.lr"] == 1e-3
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert set(metrics["event"]) == {"train", "eval"} and "val/loss" in metrics

    duckdb = pytest.importorskip("duckdb")
    ranking = duckdb.sql(
        f"""SELECT optimizer, avg("summary.final_full_val_loss") AS loss FROM '{out / "runs.parquet"}'
            WHERE status = 'completed' GROUP BY optimizer ORDER BY loss"""
    ).fetchall()
    assert [name for name, _ in ranking] == ["soap", "adamw"]
    assert ranking[0][1] == pytest.approx((finals["soap-s0"] + finals["soap-s1"]) / 2)


def test_the_export_never_writes_over_a_users_folder_or_into_the_store(tmp_path: Path) -> None:
    _store(tmp_path)
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError, match="no export wrote it"):
        export_store(tmp_path, users)
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]
    with pytest.raises(ReportError, match="is the run store .*, inside it or above it"):
        export_store(tmp_path, tmp_path / "runs" / "exp")
    export_store(tmp_path, tmp_path / "export")
    assert (tmp_path / "export" / MARKER).exists()
    export_store(tmp_path, tmp_path / "export")  # its own folder: replaced
    (tmp_path / "export" / "notes.txt").write_text("added by the user")
    with pytest.raises(ReportError, match="holds notes.txt, which no export wrote"):
        export_store(tmp_path, tmp_path / "export")  # nor is a file a user added since replaced
    assert (tmp_path / "export" / "notes.txt").read_text() == "added by the user"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--results-dir", "nowhere"], "no run store at nowhere/runs"),
        (["--results-dir", ".", "--experiment", "nope"], "no such experiment 'nope'"),
        (["--results-dir", ".", "--out", "runs/exp"], "inside it or above it"),
    ],
)
def test_bad_input_to_the_export_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    _store(tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("export: error: ") and expected in line, line
    assert not (tmp_path / "export").exists()


def test_each_exported_run_carries_its_role_from_the_tuning_log(tmp_path: Path) -> None:
    """A reproduction's tuning runs and report runs are told apart in runs.parquet (tuning.json's roles), so a
    query over reported seeds never averages in the seed that picked the lr; a run no log lists has no role."""
    import json

    for seed in (0, 1, 2):
        config = {**syn.base_config("exp", "soap", seed, 3e-3, 100), "sweep_keys": ["variant=soap_f10", "optimizer.lr"]}
        syn.write_run(tmp_path, "exp", f"soap-s{seed}", config, [(100, 10.0, 1.5 + 0.01 * seed)])
    syn.write_run(tmp_path, "exp", "adamw-s0", syn.base_config("exp", "adamw", 0, 1e-3, 100), [(100, 10.0, 1.7)])
    runs = [{"arm": "soap_f10", "lr": 0.003, "seed": seed, "stage": "grid", "role": role}
            for seed, role in ((0, "tune"), (1, "report"), (2, "report"))]  # fmt: skip
    (tmp_path / "runs" / "exp" / "tuning.json").write_text(json.dumps({"experiment": "exp", "runs": runs}))
    export_store(tmp_path, tmp_path / "export")
    roles = pd.read_parquet(tmp_path / "export" / "runs.parquet").set_index("run")["role"]
    assert roles.drop("adamw-s0").to_dict() == {"soap-s0": "tune", "soap-s1": "report", "soap-s2": "report"}
    assert pd.isna(roles["adamw-s0"])  # missing, not the text "nan"

    (tmp_path / "runs" / "exp" / "tuning.json").write_text("{not json")
    with pytest.raises(ReportError, match="tuning.json: not valid JSON"):
        export_store(tmp_path, tmp_path / "export")
