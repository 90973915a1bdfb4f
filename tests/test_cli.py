"""The command line: exit codes, one-line errors, nothing half-written, W&B offline files."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_cli


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    "override,field",
    [
        ("optimizer.lr=-1", "lr"),
        ("optimizer.betas=[0.9,1.5]", "betas[1]"),
        ("optimizer.eps=-1e-8", "eps"),
        ("trainer.eval_interval=0", "trainer.eval_interval"),
        ("+optimizer.momentum=0.9", "optimizer.momentum"),
    ],
)
def test_bad_hyperparameter_is_one_line_exit_2_and_no_run_dir(results_dir, override, field) -> None:
    result = run_cli([override], results_dir)
    assert result.returncode == 2, result.stderr
    (line,) = _error_lines(result)
    assert field in line
    assert not (results_dir / "runs").exists(), "nothing is written for a rejected config"


def test_missing_data_file_is_one_line_naming_the_file(results_dir, tmp_path) -> None:
    empty = tmp_path / "nodata"
    empty.mkdir()
    result = run_cli(["data.download=false"], results_dir, env={"SOAPBENCH_DATA": str(empty)})
    assert result.returncode == 2
    (line,) = _error_lines(result)
    assert str(empty / "tinyshakespeare" / "input.txt") in line and "SOAPBENCH_DATA" in line
    assert not (results_dir / "runs").exists()


def test_failed_download_is_one_line_too(results_dir, tmp_path) -> None:
    empty = tmp_path / "nodata"
    empty.mkdir()
    # An unroutable local port: the download fails at once, as it does offline.
    result = run_cli(["data.url=http://127.0.0.1:9/input.txt"], results_dir, env={"SOAPBENCH_DATA": str(empty)})
    assert result.returncode == 2
    (line,) = _error_lines(result)
    assert "could not download" in line


def test_unknown_optimizer_lists_the_valid_ones(results_dir) -> None:
    result = run_cli(["optimizer=sgd_with_vibes"], results_dir)
    assert result.returncode != 0
    assert "adamw" in result.stderr


def test_lr_10_diverges_with_exit_code_0(results_dir) -> None:
    result = run_cli(["optimizer.lr=10", "trainer.max_steps=60"], results_dir)
    assert result.returncode == 0, result.stderr
    (summary_path,) = (results_dir / "runs").glob("*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "diverged"
    assert summary["diverged_step"] >= 1
    assert "diverged" in result.stdout


def test_wandb_offline_run_is_written_into_the_run_directory(results_dir) -> None:
    result = run_cli(["logger.wandb.mode=offline", "trainer.max_steps=3", "trainer.eval_interval=3"], results_dir)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (results_dir / "runs").glob("*/*")
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, "an offline W&B run to `wandb sync` later"
    assert any(offline_runs[0].glob("*.wandb"))


def test_multirun_sweeps_a_grid_a_failure_does_not_stop_it_and_the_exit_code_says_so(results_dir) -> None:
    result = run_cli(
        ["-m", "optimizer.lr=1e-3,-1", "seed=1,2", "trainer.max_steps=3", "trainer.eval_interval=3"], results_dir
    )
    assert result.returncode == 1, "a sweep with rejected arms is not a success"
    summaries = [json.loads(p.read_text()) for p in (results_dir / "runs").glob("*/*/summary.json")]
    assert sorted(s["seed"] for s in summaries) == [1, 2], "the two valid jobs ran; the invalid lr was reported"
    assert result.stderr.count("error:") == 2
    table = result.stdout[result.stdout.index("job  outcome") :].splitlines()
    assert [row.split()[1] for row in table[1:5]] == ["completed", "completed", "bad", "bad"]
    assert table[-1] == "sweep: 2 bad input, 2 completed"


def test_local_parallel_launcher_runs_jobs_in_worker_processes_sharing_the_cores(results_dir) -> None:
    result = run_cli(
        [
            "-m",
            "hydra/launcher=local_parallel",
            "hydra.launcher.n_jobs=2",
            "seed=1,2",
            "trainer.max_steps=3",
            "trainer.eval_interval=3",
            "trainer.threads=null",
        ],  # the launcher's share, not FAST's one thread
        results_dir,
    )
    assert result.returncode == 0, result.stderr
    summaries = [json.loads(p.read_text()) for p in (results_dir / "runs").glob("*/*/summary.json")]
    assert sorted(s["seed"] for s in summaries) == [1, 2]
    assert all(s["status"] == "completed" for s in summaries)
    cores = len(os.sched_getaffinity(0))
    assert all(s["threads"] == max(1, cores // 2) for s in summaries), "two jobs: half the cores each"
    assert all(s["device"].endswith(f"x{max(1, cores // 2)} threads") for s in summaries)
    assert all(s["segments"][0]["jobs"] == 2 for s in summaries), "the load is judged against both jobs"


def test_wandb_online_without_a_server_falls_back_to_offline_with_one_warning(results_dir) -> None:
    # Port 9 on localhost refuses at once, as a machine without network does after its timeout.
    env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "0" * 40}
    result = run_cli(
        ["logger.wandb.mode=online", "trainer.max_steps=3", "trainer.eval_interval=3"], results_dir, env=env
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "W&B server unreachable (127.0.0.1:9" in warnings[0] and "wandb sync" in warnings[0]
    (run_dir,) = (results_dir / "runs").glob("*/*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["wandb_mode"] == "offline"
    assert list((run_dir / "wandb").glob("offline-run-*/*.wandb")), "an offline run for `wandb sync`"


def test_the_run_summary_prints_the_whole_split_final_and_whether_the_machine_was_shared() -> None:
    from soapbench.cli import format_result

    summary = {
        "run_dir": "r",
        "status": "completed",
        "optimizer": "soap",
        "model": "m",
        "steps": 10,
        "final_val_loss": 1.2345678,
        "final_full_val_loss": 1.25,
        "best_val_loss": 1.2,
        "train_seconds": 3.0,
        "optimizer_seconds": 1.0,
        "device": "cpu",
        "machine_shared": {"shared": True, "reasons": ["load 3.9 on 2 cores"]},
    }
    text = format_result(summary)
    assert "final val loss        1.2346 (fixed evaluation set)" in text
    assert "whole-split val loss  1.2500" in text
    assert "machine shared        yes: load 3.9 on 2 cores (wall-clock numbers are unreliable)" in text
    clean = format_result({**summary, "machine_shared": {"shared": False, "reasons": []}})
    assert "machine shared        no (timings are clean)" in clean
