"""The house's shape, pinned: functions a reader can hold in one sitting, and one place that composes configs."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import CONFIG_DIR, REPO

PACKAGE_FOLDERS = ("soapbench", "optimizers", "models", "data", "scripts")
MAX_FUNCTION_LINES = 150
MAX_TRAIN_LOOP_LINES = 120


def _functions() -> list[tuple[str, int]]:
    found = []
    for folder in PACKAGE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.append((f"{path.relative_to(REPO)}:{node.name}", node.end_lineno - node.lineno + 1))
    return found


def test_no_function_in_the_package_is_longer_than_a_reader_can_hold() -> None:
    too_long = [(name, lines) for name, lines in _functions() if lines > MAX_FUNCTION_LINES]
    assert too_long == [], f"over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_the_training_loop_reads_in_a_screenful_or_two() -> None:
    lines = dict(_functions())["soapbench/trainer.py:_train"]
    assert lines <= MAX_TRAIN_LOOP_LINES, f"_train is {lines} lines"


@pytest.mark.parametrize("name", ["initialize_config_dir", "initialize_config_module", "initialize"])
def test_hydra_is_composed_in_one_place(name: str) -> None:
    """Every driver (train, reproduce, search, benches, check-optimizer) and the tests compose through
    soapbench.composition, so configs/ is located once and a run's config means one thing everywhere."""
    callers = []
    for folder in (*PACKAGE_FOLDERS, "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            imported = any(
                isinstance(node, ast.ImportFrom) and node.module == "hydra" and any(a.name == name for a in node.names)
                for node in ast.walk(tree)
            )
            if imported:
                callers.append(str(path.relative_to(REPO)))
    assert callers in ([], ["soapbench/composition.py"]), callers


def test_the_composition_finds_this_checkouts_configs() -> None:
    from soapbench.composition import CONFIG_DIR as composition_config_dir

    assert composition_config_dir == CONFIG_DIR
