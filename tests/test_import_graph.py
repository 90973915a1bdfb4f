"""No import circles in the project: every module can be read (and loaded) after the modules it imports.

The graph counts every import of a project module, at module level or inside a function: a deferred import that
closes a circle is the same coupling, only hidden from the interpreter.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Installed package -> its folder in the checkout (optimizers/ installs as soapbench.optimizers, ...).
PACKAGE_DIRS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def _module_name(path: Path, folder: Path, package: str) -> str:
    parts = [*package.split("."), *path.relative_to(folder).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute_module(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module a ``from ... import`` names, relative ones (``from .linalg import x``) resolved from the importer."""
    if node.level == 0:
        return node.module or ""
    parts = importer.split(".")
    package = parts if is_package else parts[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = {
        _module_name(path, root / folder, package): path
        for package, folder in PACKAGE_DIRS.items()
        for path in (root / folder).rglob("*.py")
    }
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _absolute_module(node, name, is_package=path.name == "__init__.py")
                targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_the_graph_covers_the_folders_installed_under_soapbench() -> None:
    graph = import_graph()
    imported = set().union(*graph.values())
    for package in ("soapbench.optimizers", "soapbench.models", "soapbench.data"):
        assert package in graph, f"{package} is not in the import graph; pyproject.toml's package-dir: {PACKAGE_DIRS}"
        # an edge into the folder: imports of it are resolved under their installed names
        assert any(target.startswith(f"{package}.") for target in imported), f"no import of {package}.* was resolved"


def _checkout_with_optimizers(root: Path, files: dict[str, str]) -> Path:
    """A checkout whose optimizers/ holds ``files`` (name -> source) and whose other package folders are empty."""
    package = root / "optimizers"
    package.mkdir()
    for name, source in files.items():
        (package / name).write_text(source)
    for folder in set(PACKAGE_DIRS.values()) - {"optimizers"}:
        (root / folder).mkdir()
    return root


@pytest.mark.parametrize(
    "init, deferred, circle",
    [
        ("", "from soapbench.optimizers.host import helper", ["host", "mixin"]),
        ("from .host import Host\n", "from . import host", ["", "host", "mixin"]),  # relative, resolved from the module
    ],
    ids=["deferred", "relative"],
)
def test_a_deferred_or_relative_import_that_closes_a_circle_is_found(tmp_path: Path, init, deferred, circle) -> None:
    checkout = _checkout_with_optimizers(
        tmp_path,
        {
            "__init__.py": init,
            "host.py": "from soapbench.optimizers.mixin import Mixin\n",
            "mixin.py": f"class Mixin:\n    def f(self):\n        {deferred}\n",
        },
    )
    expected = [".".join(filter(None, ["soapbench.optimizers", name])) for name in circle]
    assert circles(import_graph(checkout)) == [expected]
