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


# --------------------------------------------
