"""The install puts one top-level name into site-packages, soapbench: optimizers/, models/ and data/ stay
folders of the checkout but install as soapbench.optimizers, soapbench.models and soapbench.data, so they
cannot collide with a researcher's own ``data`` or ``models`` module in the same environment."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("optimizers", "models", "data")
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_install_adds_no_top_level_data_models_or_optimizers(tmp_path: Path) -> None:
    # Outside the checkout and without PYTHONPATH, only what the install put on the path is importable.
    probe = (
        "import importlib.util, json\n"
        f"print(json.dumps({{name: getattr(importlib.util.find_spec(name), 'origin', None) for name in {FOLDERS!r}}}))\n"
        "import soapbench.optimizers.soap, soapbench.models.registry, soapbench.data.tokenized\n"
        "print(soapbench.optimizers.soap.__file__)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    lines = result.stdout.splitlines()
    assert lines, f"the probe failed before it looked:\n{result.stderr}"
    top_level = json.loads(lines[0])
    assert top_level == dict.fromkeys(FOLDERS), f"the install puts these top-level modules on the path: {top_level}"
    assert result.returncode == 0, f"soapbench's packages do not import from outside the checkout:\n{result.stderr}"
    assert Path(lines[-1]).parts[-2:] == ("optimizers", "soap.py")


def test_every_package_folder_is_in_the_install_list() -> None:
    assert {f"soapbench.{folder}": folder for folder in FOLDERS}.items() <= SETUPTOOLS["package-dir"].items()
    packages = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            packages.add(".".join((package, *init.parent.relative_to(REPO / folder).parts)))
    missing = sorted(packages - set(SETUPTOOLS["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml, or the wheel leaves them out"
    assert all(package == "soapbench" or package.startswith("soapbench.") for package in SETUPTOOLS["packages"])


def test_code_imports_the_folders_by_their_installed_names() -> None:
    # From the repository root the folders are importable by their bare names too (the current directory is on
    # sys.path), so a stray `from optimizers...` would run there, as a second copy of the module, and fail elsewhere.
    bare = []
    for folder in ("soapbench", *FOLDERS, "scripts", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                bare += [
                    f"{path.relative_to(REPO)}:{node.lineno}: {name}" for name in names if name.split(".")[0] in FOLDERS
                ]
    assert not bare, "import these as soapbench.<folder>...:\n" + "\n".join(bare)
