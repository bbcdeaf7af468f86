"""The layout of the code (issue 18): a bottom layer that imports none of the layers above it,
no import circles, and the six stages where a newcomer looks for them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "schemas", "streams", "connectors", "api_shim")
STAGES = ["request", "enrich", "render", "route", "deliver", "status"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(path): path
    for package in PACKAGES
    for path in sorted((ROOT / package).rglob("*.py"))
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST) -> set[str]:
    """Every project module imported anywhere in the file (late imports too), except under
    `if TYPE_CHECKING:`, which never runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES}


GRAPH = {name: _imported(ast.parse(path.read_text())) - {name} for name, path in MODULES.items()}


def test_the_bottom_layer_imports_nothing_above_it() -> None:
    above = ("streams", "connectors", "api_shim")
    wrong = {
        name: sorted(i for i in imports if i.split(".")[0] in above)
        for name, imports in GRAPH.items()
        if name.split(".")[0] == "core"
    }
    assert {name: imports for name, imports in wrong.items() if imports} == {}


def test_no_import_circles() -> None:
    circles: list[list[str]] = []
    done: set[str] = set()

    def walk(name: str, path: list[str]) -> None:
        if name in path:
            circles.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        for imported in sorted(GRAPH.get(name, ())):
            walk(imported, [*path, name])
        done.add(name)

    for name in sorted(GRAPH):
        walk(name, [])
    assert circles == []


def test_the_six_stages_are_in_streams_stages() -> None:
    found = sorted(p.stem for p in (ROOT / "streams" / "stages").glob("*.py"))
    # status_loop: the status stage's batched loop, which also runs the receipts (it imports
    # streams.receipts, which imports the stage: it cannot live in status.py).
    assert found == sorted([*STAGES, "__init__", "status_loop"])


def test_the_graph_sees_imports() -> None:
    # A check that found no edges would pass for any layout.
    assert "streams.state.batches" in GRAPH["streams.stages.status"]
    assert "core.settings" in GRAPH["core.catalog"]


def test_every_package_is_listed_for_setuptools() -> None:
    # A folder missing from pyproject.toml installs without its modules (the Docker image).
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    }
    assert folders - listed == set()
