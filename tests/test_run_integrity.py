"""Run integrity: a stored result is never mislabelled, skipped by mistake, interleaved, or stuck.

Each test reproduces a way a run could be lost or mislabelled (another config's checkpoint,
another dataset, two processes on one directory, a killed writer, a full disk, a truncated
checkpoint, a signal) and checks the harness refuses it or recovers from it exactly.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soapbench.errors import ConfigError, SoapbenchError
from soapbench.results import RunStore
from soapbench.trainer import TIMING_KEYS
from tests.conftest import FAST, REPO, run_cli, train_in_process

SHARED_DATA = Path(os.environ["SOAPBENCH_DATA"])


def _runs(results_dir: Path) -> list[Path]:
    return sorted((results_dir / "runs").glob("*/*")) if (results_dir / "runs").exists() else []


def _comparable(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in RunStore(run_dir).read_metrics()]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted FAST run (12 steps, log every 3, checkpoint every 6) to compare resumed runs with."""
    results = tmp_path_factory.mktemp("reference")
    train_in_process([], results)
    (run_dir,) = _runs(results)
    return run_dir


# ------------------------------------------------------------------ identity


def test_resume_from_another_configs_checkpoint_is_refused_naming_the_keys(tmp_path, reference) -> None:
    other = tmp_path / "other"
    with pytest.raises(ConfigError) as refused:
        train_in_process(["optimizer=soap", f"resume={reference}"], other)
    message = str(refused.value)
    assert message.startswith(f"resume: {reference / 'checkpoint.pt'} is a checkpoint of a different config")
    assert "optimizer.name" in message and "allow_identity_mismatch=true" in message and "\n" not in message
    assert _runs(other) == [], "nothing is written for a refused resume"

    # Allowed explicitly: it resumes, and the summary records from what and how it differs.
    summary = train_in_process(["trainer.max_steps=15", f"resume={reference}", "allow_identity_mismatch=true"], other)
    assert summary["status"] == "completed" and summary["steps"] == 15
    assert summary["resumed_from"] == {"checkpoint": str(reference / "checkpoint.pt"), "step": 12,
                                       "identity_differences": ["trainer.max_steps"]}  # fmt: skip
    (run_dir,) = _runs(other)
    assert [r["step"] for r in RunStore(run_dir).read_metrics()][:3] == [0, 3, 6], (
        "the log up to the checkpoint came along"
    )

    with pytest.raises(ConfigError, match="at step 12, past trainer.max_steps=6"):
        train_in_process(
            ["trainer.max_steps=6", f"resume={reference}", "allow_identity_mismatch=true"], tmp_path / "short"
        )


def test_a_hand_picked_run_name_never_skips_to_another_configs_result(results_dir) -> None:
    train_in_process(["run_name=mine", "trainer.max_steps=3"], results_dir)
    with pytest.raises(
        ConfigError, match=r"^run_name: .*mine holds a run of a different config \(differs in optimizer.lr\)"
    ):
        train_in_process(["run_name=mine", "trainer.max_steps=3", "optimizer.lr=2e-3"], results_dir)


def test_another_dataset_is_another_run_and_a_bad_one_is_an_error(tmp_path) -> None:
    text = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()
    other_root, empty_root = tmp_path / "other", tmp_path / "empty"
    for root, content in ((other_root, text[: len(text) // 2][::-1]), (empty_root, "")):
        (root / "tinyshakespeare").mkdir(parents=True)
        (root / "tinyshakespeare" / "input.txt").write_text(content)
    results = tmp_path / "results"
    result = run_cli(["-m", f"paths.data_root={SHARED_DATA},{other_root},{empty_root}", "trainer.max_steps=3",
                      "trainer.eval_interval=3"], results)  # fmt: skip
    assert result.returncode == 1, result.stderr
    runs = _runs(results)
    assert len(runs) == 2, "each dataset is its own run; the empty file is refused"
    first, second = (_summary(r) for r in runs)
    assert (
        first["identity"]["fields"]["data_fingerprint.train_sha256"]
        != second["identity"]["fields"]["data_fingerprint.train_sha256"]
    )
    assert first["final_val_loss"] != second["final_val_loss"]
    assert "skipping" not in result.stdout
    (line,) = _error_lines(result)
    assert str(empty_root / "tinyshakespeare" / "input.txt") in line
    assert result.stdout.strip().splitlines()[-1] == "sweep: 1 bad input, 2 completed"


# ------------------------------------------------------------------ one process per run directory


def test_a_second_launch_is_refused_and_a_killed_holder_never_blocks(results_dir) -> None:
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *FAST, f"paths.results_dir={results_dir}"]
    long_run = ["trainer.max_steps=100000", "trainer.eval_interval=100000"]
    first = subprocess.Popen([*command, *long_run], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any((r / "checkpoint.pt").exists() for r in _runs(results_dir)):
            time.sleep(0.05)
        (run_dir,) = _runs(results_dir)
        second = run_cli(long_run, results_dir)
        assert second.returncode == 3
        assert _error_lines(second) == [
            f"error: {run_dir} is being trained by another process (pid {first.pid}); "
            "wait for it to finish or stop it, then run this command again"
        ]
        assert "resuming" not in second.stdout
    finally:
        first.kill()
        first.wait()
    # The dead holder's lock went with it: the same config resumes at once.
    assert train_in_process([*long_run, "trainer.stop_after_steps=2"], results_dir)["status"] == "running"
    steps = [r["step"] for r in RunStore(run_dir).read_metrics() if r["event"] == "train"]
    assert steps == sorted(set(steps)), "one writer: no duplicated or out-of-order records"


def test_stale_temp_files_of_killed_writers_are_removed_on_start(results_dir) -> None:
    train_in_process(["trainer.stop_after_steps=6"], results_dir)
    (run_dir,) = _runs(results_dir)
    left = [run_dir / ".checkpoint.pt.k2j3h4.tmp", run_dir / ".summary.json.abcd12", run_dir / ".checkpoint.pt.zz9"]
    for path in left:
        path.write_bytes(b"x" * 1000)
    train_in_process([], results_dir)
    assert not [p for p in left if p.exists()]
    assert _summary(run_dir)["status"] == "completed"


# ------------------------------------------------------------------ environmental failures


def test_a_full_disk_interrupts_and_a_plain_rerun_finishes_exactly(results_dir, reference) -> None:
    train_in_process(["trainer.stop_after_steps=6"], results_dir)  # a good checkpoint at step 6
    (run_dir,) = _runs(results_dir)

    def small_disk() -> None:  # every file may grow to 64 KB: the checkpoint at step 12 cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    command = [sys.executable, str(REPO / "scripts" / "train.py"), *FAST, f"paths.results_dir={results_dir}"]
    full = subprocess.run(
        command, capture_output=True, text=True, preexec_fn=small_disk, timeout=300, cwd=results_dir.parent
    )
    assert full.returncode == 75, full.stderr
    (line,) = _error_lines(full)
    assert line.startswith("error: run interrupted: OSError: ") and "the same command resumes" in line
    interrupted = _summary(run_dir)
    assert interrupted["status"] == "interrupted" and interrupted["last_failure"]["status"] == "interrupted"
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")], "the failed write left no temp file"

    train_in_process([], results_dir)
    assert _comparable(run_dir) == _comparable(reference)
    final = _summary(run_dir)
    assert final["status"] == "completed" and final["final_val_loss"] == _summary(reference)["final_val_loss"]
    assert final["last_failure"]["error"].startswith("OSError"), "the summary shows what happened"


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_and_names_the_file(
    results_dir, reference, capsys
) -> None:
    train_in_process(["trainer.checkpoint_interval=4", "trainer.stop_after_steps=10"], results_dir)  # ckpts 4, 8, 10
    (run_dir,) = _runs(results_dir)
    latest = run_dir / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:5000])
    summary = train_in_process(["trainer.checkpoint_interval=4"], results_dir)
    err = capsys.readouterr().err
    assert f"warning: {latest} is unreadable" in err and "resuming from " + str(run_dir / "checkpoint.prev.pt") in err
    assert summary["status"] == "completed"
    assert _comparable(run_dir) == _comparable(reference)
    assert "unreadable checkpoint" in summary["last_failure"]["error"]


def test_no_readable_checkpoint_is_one_error_naming_the_files(results_dir) -> None:
    train_in_process(["trainer.stop_after_steps=6"], results_dir)
    (run_dir,) = _runs(results_dir)
    (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SoapbenchError, match=f"^checkpoint unreadable: {run_dir / 'checkpoint.pt'} \\("):
        train_in_process([], results_dir)


# ------------------------------------------------------------------ signals


LONG = ["trainer.max_steps=300", "trainer.eval_interval=100", "trainer.checkpoint_interval=100"]


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("long_reference")
    train_in_process(LONG, results)
    (run_dir,) = _runs(results)
    return run_dir


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_exits_with_its_code_and_the_rerun_logs_what_an_uninterrupted_run_logs(
    results_dir, long_reference, signum, code, capsys
) -> None:
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *FAST, f"paths.results_dir={results_dir}", *LONG]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = _runs(results_dir)
        if runs and any(r.get("event") == "train" and r["step"] >= 4 for r in RunStore(runs[0]).read_metrics()):
            break
        time.sleep(0.01)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    (run_dir,) = _runs(results_dir)
    stopped = _summary(run_dir)
    assert stopped["status"] == "interrupted" and stopped["signal"] == signal.Signals(signum).name
    assert 4 <= stopped["steps"] < 300
    assert [line for line in stderr.splitlines() if line.startswith("interrupted")] == [
        f"interrupted ({signal.Signals(signum).name}) at step {stopped['steps']}; checkpointed, the same command resumes {run_dir}"
    ]
    assert train_in_process(LONG, results_dir)["status"] == "completed"
    assert f"resuming from step {stopped['steps']} " in capsys.readouterr().out
    assert _comparable(run_dir) == _comparable(long_reference)


# ------------------------------------------------------------------ damaged run files


def test_a_metrics_log_cut_mid_way_resumes_with_a_warning_and_marks_the_gap(results_dir, reference) -> None:
    train_in_process(["trainer.stop_after_steps=6"], results_dir)  # checkpoint at step 6
    (run_dir,) = _runs(results_dir)
    metrics = run_dir / "metrics.jsonl"
    logged = len(metrics.read_text().splitlines())
    metrics.write_bytes(metrics.read_bytes()[: metrics.stat().st_size // 2])  # ends inside a record
    kept = len(RunStore(run_dir).read_metrics())
    assert kept < logged

    result = run_cli([], results_dir)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(metrics) in warnings[0] and f"holds {kept} of the {logged} records" in warnings[0]
    summary = _summary(run_dir)
    assert summary["status"] == "completed"
    (gap,) = summary["metrics_gaps"]
    assert (gap["records_found"], gap["records_expected"], gap["until_step"]) == (kept, logged, 6)
    # What survived and everything after the checkpoint is as an uninterrupted run logged it; only the gap is missing.
    expected = _comparable(reference)
    assert _comparable(run_dir) == expected[:kept] + expected[logged:]


def test_a_metrics_log_with_bytes_that_are_not_utf8_is_one_error_naming_it_on_every_rerun(results_dir) -> None:
    train_in_process(["trainer.stop_after_steps=6"], results_dir)
    (run_dir,) = _runs(results_dir)
    metrics = run_dir / "metrics.jsonl"
    data = metrics.read_bytes()
    metrics.write_bytes(data[:40] + b"\xff" + data[41:])
    for _ in range(2):
        result = run_cli([], results_dir)
        assert result.returncode == 2, result.stderr
        (line,) = _error_lines(result)
        assert line.startswith(f"error: {metrics}: byte 40 is not UTF-8 text") and "restore it" in line
        assert "Traceback" not in result.stderr
        assert _summary(run_dir)["status"] == "running", "bad input, not a failed result"


def _to_bfloat16(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(torch.bfloat16) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_bfloat16(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("part", ["model", "optimizer"])
def test_a_checkpoint_converted_to_bfloat16_is_refused_naming_the_file(results_dir, part) -> None:
    import torch

    train_in_process(["trainer.stop_after_steps=6"], results_dir)
    (run_dir,) = _runs(results_dir)
    path = run_dir / "checkpoint.pt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint[part] = _to_bfloat16(checkpoint[part])
    torch.save(checkpoint, path)
    result = run_cli([], results_dir)
    assert result.returncode == 2, result.stderr
    (line,) = _error_lines(result)
    assert line.startswith(f"error: resume: {path} holds tensors in other dtypes than this run's ({part}.")
    assert "bfloat16, the run keeps float32" in line
    assert _summary(run_dir)["status"] == "running" and _summary(run_dir)["steps"] == 6
