"""Nothing a user has is destroyed, hijacked or leaked by a hostile or careless input.

A crafted checkpoint never runs code (auto-resume, resume= and the previous-checkpoint fallback); a
name that is a path (experiment, run, study, report experiment) never writes outside its root; the
report never replaces a folder it did not write, nor the run store; a stored config's
``${oc.env:...}`` never reaches a report.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import synthetic_runs as syn

from tests.conftest import REPO, RunsCode, run_cli, train_in_process


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for a folder): equal trees mean nothing was touched."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _script(name: str):
    """``scripts/<name>.py``'s module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_cli", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ checkpoints


def _craft(checkpoint: Path, marker: Path) -> None:
    """The real checkpoint with one more object in it, which runs code when unpickled."""
    import torch

    payload = torch.load(checkpoint, weights_only=False)  # written by this test a moment ago
    payload["state"]["note"] = RunsCode(marker)
    torch.save(payload, checkpoint)


CHECKPOINTS_AT_3_AND_6 = ["trainer.checkpoint_interval=3"]


@pytest.mark.parametrize("route", ["auto-resume", "resume=<file>", "previous-checkpoint fallback"])
def test_a_crafted_checkpoint_is_refused_without_running_it(tmp_path, route) -> None:
    results = tmp_path / "results"
    train_in_process([*CHECKPOINTS_AT_3_AND_6, "trainer.stop_after_steps=6"], results)
    (run_dir,) = (results / "runs").glob("*/*")
    latest, previous = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    marker = tmp_path / "code_ran"
    if route == "auto-resume":
        crafted, args, where = latest, CHECKPOINTS_AT_3_AND_6, results
    elif route == "resume=<file>":
        crafted, where = tmp_path / "downloaded.pt", tmp_path / "other_results"
        shutil.copyfile(latest, crafted)
        where.mkdir()
        args = [*CHECKPOINTS_AT_3_AND_6, f"resume={crafted}"]
    else:  # the latest is damaged, so the run falls back to the previous one, which is the crafted one
        crafted, args, where = previous, CHECKPOINTS_AT_3_AND_6, results
        latest.write_bytes(latest.read_bytes()[:5000])
    _craft(crafted, marker)
    before = _tree(where)

    result = run_cli(args, where)
    assert result.returncode == 2, result.stderr
    assert _error_lines(result.stderr) == [
        f"error: resume: {crafted} is not a soapbench checkpoint: loading it would call builtins.exec, which no "
        "checkpoint holds, so it was not loaded; resume from a checkpoint soapbench wrote, or delete this one"
    ]
    assert "Traceback" not in result.stderr
    assert not marker.exists(), "the crafted object was never unpickled"
    unlocked = lambda tree: {k: v for k, v in tree.items() if not k.endswith(".lock")}  # noqa: E731 - holds the pid
    assert unlocked(_tree(where)) == unlocked(before), "nothing written, renamed or removed"


# ------------------------------------------------------------------ names that are paths


@pytest.mark.parametrize(
    "args",
    [
        ["experiment_name=../../escaped"],
        ["experiment_name=<tmp>/escaped"],
        ["run_name=../../escaped"],
        ["-m", "experiment_name=../../escaped", "seed=1,2"],
        ["-m", "experiment_name=<tmp>/escaped", "seed=1,2"],
    ],
    ids=["relative", "absolute", "run_name", "sweep-relative", "sweep-absolute"],
)
def test_a_name_that_is_a_path_is_refused_and_writes_nothing_anywhere(tmp_path, args) -> None:
    results = tmp_path / "deep" / "results"
    results.mkdir(parents=True)
    before = _tree(tmp_path)
    result = run_cli([a.replace("<tmp>", str(tmp_path)) for a in args], results, timeout=120)
    assert result.returncode == 2, result.stderr
    key = args[-2 if args[0] == "-m" else 0].split("=")[0]
    (line,) = _error_lines(result.stderr)
    assert line.startswith(f"error: {key}: ") and "is a path, not a name" in line
    assert "Traceback" not in result.stderr
    assert _tree(tmp_path) == before, "no run dir, sweep dir or multirun.yaml inside or outside the results dir"


def test_a_search_study_that_is_a_path_is_refused_and_writes_nothing(tmp_path, capsys) -> None:
    pytest.importorskip("optuna")
    results = tmp_path / "deep" / "results"
    results.mkdir(parents=True)
    args = [
        "soap_lr_betas",
        "trainer.max_steps=2",
        "--trials",
        "1",
        "--study",
        "../../escaped",
        "--results-dir",
        str(results),
    ]
    code = _script("search").main(args)  # the short trial bounds what the test costs where the study is not refused
    assert code == 2
    assert _error_lines(capsys.readouterr().err) == [
        "error: study: '../../escaped' is a path, not a name; use a plain name without '/' or '..' (e.g. soap_lr_betas_600)"
    ]
    assert _tree(tmp_path) == {"deep": None, "deep/results": None}


def test_a_benchmark_tag_that_is_a_path_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        _script("bench_optimizers").parse_args(["--tag", "../../escaped"])
    assert stopped.value.code == 2
    assert "error: --tag: '../../escaped' is a path, not a name" in capsys.readouterr().err


# ------------------------------------------------------------------ the report's output folder


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for opt in ("adamw", "soap"):
        evals = [(100, 10.0, 3.0), (200, 20.0, 2.5)]
        syn.write_run(root, "exp", opt, syn.base_config("exp", opt, 0, 1e-3, 200), evals)
    return root


def _report(args: list[str], store: Path) -> int:
    return _script("report").main(["--results-dir", str(store), "--no-figures", *args])


def test_report_out_on_a_users_folder_is_refused_and_the_folder_kept(store, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert _report(["--experiment", "exp", "--out", str(out)], store) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"report: error: --out {out} is not empty and no report wrote it (no .soapbench-report); "
                   "choose a new or empty folder, or move its files out")  # fmt: skip
    assert _tree(tmp_path / "mine") == {"thesis.tex": b"years of work"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "results"], "no temp folder left"


def test_report_replaces_only_what_a_report_wrote(store, tmp_path, capsys) -> None:
    out = tmp_path / "reports" / "exp"
    assert _report(["--experiment", "exp", "--out", str(out)], store) == 0
    first = _tree(out)
    assert ".soapbench-report" in first and "report.md" in first
    (out / "report.md").write_text("an older report's text")  # a file the report wrote: it is the report's to replace
    (out / "configurations.csv").unlink()
    assert _report(["--experiment", "exp", "--out", str(out)], store) == 0
    assert set(_tree(out)) == set(first) and (out / "report.md").read_text() != "an older report's text"
    assert sorted(p.name for p in out.parent.iterdir()) == ["exp"], "the previous report's folder is gone"

    (out / "notes.md").write_text(
        "mine"
    )  # a user's file in a report folder: the folder is no longer the report's alone
    assert _report(["--experiment", "exp", "--out", str(out)], store) == 2
    assert f"--out {out} holds notes.md, which no report wrote" in capsys.readouterr().err
    assert (out / "notes.md").read_text() == "mine" and (out / "report.md").exists()


@pytest.mark.parametrize("out", ["<store>", "<store>/runs", "<store>/runs/exp", "<store>/runs/exp/adamw", "<store>/.."])
def test_report_out_on_or_around_the_run_store_is_refused(store, capsys, out) -> None:
    before = _tree(store.parent)
    assert _report(["--experiment", "exp", "--out", out.replace("<store>", str(store))], store) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the run store" in err[0]
    assert _tree(store.parent) == before


def test_report_experiment_that_is_a_path_is_refused(store, capsys) -> None:
    before = _tree(store.parent)
    assert _report(["--experiment", "../.."], store) == 2  # its default --out would be the store's parent
    assert capsys.readouterr().err.strip() == (
        "report: error: --experiment: '../..' is a path, not a name; use a plain name without '/' or '..' (e.g. lm_sweep)"
    )
    assert _tree(store.parent) == before


# ------------------------------------------------------------------ the environment


def test_an_env_interpolation_in_a_stored_config_does_not_reach_the_report(store, tmp_path, monkeypatch) -> None:
    secret = "sentinel-7f3a9c-not-for-reports"
    monkeypatch.setenv("SOAPBENCH_TEST_SECRET", secret)
    config = syn.base_config("exp", "muon", 0, 1e-3, 200, momentum="${oc.env:SOAPBENCH_TEST_SECRET}")
    config["model"]["arch"]["note"] = "${oc.env:SOAPBENCH_TEST_SECRET}"
    syn.write_run(store, "exp", "muon", config, [(100, 10.0, 3.1), (200, 20.0, 2.6)])
    out = tmp_path / "report"
    assert _script("report").main(["--results-dir", str(store), "--experiment", "exp", "--out", str(out)]) == 0
    leaked = [name for name, content in _tree(out).items() if content is not None and secret.encode() in content]
    assert leaked == []
    assert "model.arch.note: ${oc.env:SOAPBENCH_TEST_SECRET}" in (out / "report.md").read_text(), "kept as text"
