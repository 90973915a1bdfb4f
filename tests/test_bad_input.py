"""The bad-input contract through the real CLI: one `error:` line, exit 2, nothing written.

The expected lines live in README.md (between the bad-input-table markers) and are compared
word for word, so the README stays true; ``<configs/GROUP>`` there stands for the list of that
group's yaml files, so adding a config does not change the table. To print the table after
changing a message:
    python -m tests.test_bad_input
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, RunsCode, run_cli

# (input as the README shows it, what it is); <tmp> is the scratch folder prepared by _prepare.
CASES = [
    ("model=nonexistent", "an unknown config group option"),
    ("optimizer=soapp", "a misspelt optimizer: the closest name is suggested"),
    ("foo=1", "an unknown key"),
    ("+foo=1", "an unknown key added with +: it must not silently make a new run"),
    ("--config-dir=<tmp>/conf experiment=broken", "a YAML syntax error in a user config"),
    ("optimizer.lr=abc", "a hyperparameter of the wrong kind"),
    ("optimizer.lr=inf", "a non-finite hyperparameter"),
    ("optimizer.betas=[0.9]", "a tuple of the wrong length"),
    ("seed=-1", "a negative seed"),
    ("seed=abc", "a seed that is not a number"),
    ("device=tpu", "an unknown device"),
    ("paths.results_dir=<tmp>/a_file/results", "a results dir that cannot be written (read-only, or under a file)"),
    ("resume=<tmp>/corrupt.pt", "a corrupt checkpoint"),
    ("resume=<tmp>/crafted.pt", "a file crafted to run code when unpickled: it is not unpickled"),
    ("experiment_name=../../elsewhere", "an experiment name that is a path (it would write outside the results dir)"),
    ("-m experiment_name=<tmp>/elsewhere seed=1,2", "the same in a sweep, before its sweep dir is made"),
]
BEGIN, END = "<!-- bad-input-table: begin -->", "<!-- bad-input-table: end -->"


def _prepare(tmp: Path) -> None:
    (tmp / "conf" / "experiment").mkdir(parents=True, exist_ok=True)
    (tmp / "conf" / "experiment" / "broken.yaml").write_text(
        "# @package _global_\ntrainer:\n  max_steps: [1, 2\nseed: 3\n"
    )
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "corrupt.pt").write_bytes(b"not a checkpoint, 40 bytes of something")
    import torch  # not at module level: conftest's thread settings come first

    torch.save({"model": {}, "optimizer": {}, "state": RunsCode(tmp / "code_ran")}, tmp / "crafted.pt")


def _group_lists() -> dict[str, str]:
    """What each ``<configs/GROUP>`` placeholder stands for: the group's options, as the error lists them."""
    groups = ("model", "optimizer")
    return {f"<configs/{g}>": ", ".join(sorted(p.stem for p in (REPO / "configs" / g).glob("*.yaml"))) for g in groups}


def _run(case: str, tmp: Path, results_dir: Path):
    args = case.replace("<tmp>", str(tmp)).split()
    result = run_cli(args, results_dir)
    lines = [line.replace(str(tmp), "<tmp>") for line in result.stderr.splitlines() if line.strip()]
    for placeholder, listing in _group_lists().items():
        lines = [line.replace(f"available: {listing}", f"available: {placeholder}") for line in lines]
    return result, lines


def _readme_rows() -> dict[str, tuple[int, str]]:
    text = (REPO / "README.md").read_text()
    table = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    rows = {}
    for match in re.finditer(r"^\| `(.+?)` \| [^|]* \| (\d+) \| `(.+)` \|$", table, flags=re.M):
        rows[match.group(1)] = (int(match.group(2)), match.group(3))
    return rows


@pytest.mark.parametrize("case", [c for c, _ in CASES])
def test_bad_input_gets_the_readme_line_exit_2_and_writes_nothing(case, tmp_path) -> None:
    _prepare(tmp_path)
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    result, lines = _run(case, tmp_path, results_dir)
    expected_code, expected_line = _readme_rows()[case]
    assert result.returncode == expected_code == 2, result.stderr
    assert lines == [expected_line], (
        "exactly the README's one line, no traceback (python -m tests.test_bad_input reprints the table)"
    )
    assert not list(results_dir.iterdir()), "nothing is written"
    assert not (tmp_path / "code_ran").exists() and not (tmp_path / "elsewhere").exists(), "nor anywhere else"


def main() -> None:
    print("| input | what it is | exit | the line |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        _prepare(tmp)
        for case, what in CASES:
            results_dir = Path(tempfile.mkdtemp(dir=tmp))
            result, lines = _run(case, tmp, results_dir)
            print(f"| `{case}` | {what} | {result.returncode} | `{' / '.join(lines)}` |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
