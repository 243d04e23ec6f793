"""The architecture DESIGN.md draws, pinned: imports run one way and never in a circle.

Every module of engine/, operators/ and state_backends/ is parsed (not
imported), and every import in it counts: at module level, inside functions
(a lazy import is still a dependency) and under ``TYPE_CHECKING`` (for the
layer order only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "engine": "onceflow.engine",
    "operators": "onceflow.operators",
    "state_backends": "onceflow.state_backends",
}


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found[_module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, tree: ast.Module, is_package: bool) -> dict[str, bool]:
    """Every module ``module`` imports, anywhere, mapped to whether only type checkers see it.

    ``from m import x`` counts as ``m.x`` when that is a module, else as ``m``.
    """
    found: dict[str, bool] = {}

    def visit(node: ast.AST, typing_only: bool) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            found[target] = found.get(target, True) and typing_only
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only or (isinstance(node, ast.If) and _is_type_checking(node)))

    visit(tree, False)
    return found


def _graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for module, (path, tree) in MODULES.items():
        graph.add_node(module)
        for target, typing_only in _imports(module, tree, path.name == "__init__.py").items():
            graph.add_edge(module, target, typing_only=typing_only)
    return graph


GRAPH = _graph()


def test_every_module_is_parsed() -> None:
    assert "onceflow.engine.runner" in MODULES
    assert "onceflow.operators.base" in MODULES
    assert "onceflow.state_backends.key_groups" in MODULES
    assert len(MODULES) > 40


def test_no_import_cycle_between_modules_of_the_package() -> None:
    # An import under ``if TYPE_CHECKING:`` never runs, so it cannot close a circle; it
    # still counts for the layer order below.
    inside = nx.DiGraph(
        (m, t) for m, t, typing_only in GRAPH.edges(data="typing_only") if t in MODULES and not typing_only
    )

    cycles = sorted(sorted(cycle) for cycle in nx.simple_cycles(inside))

    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("onceflow.state_backends", ("onceflow.operators", "onceflow.engine")),
        ("onceflow.operators", ("onceflow.engine",)),
    ],
)
def test_a_lower_layer_never_imports_a_higher_one(layer: str, forbidden: tuple[str, ...]) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, target in GRAPH.edges
        if module.startswith(layer) and target.startswith(forbidden)
    )

    assert wrong == []


def test_no_module_imports_the_flat_public_namespace() -> None:
    # ``onceflow`` itself resolves names lazily from the layers; importing it from inside
    # them would hide an upward or circular dependency behind the lazy lookup.
    wrong = sorted(module for module, target in GRAPH.edges if target == "onceflow")

    assert wrong == []


def test_nothing_imports_jobs() -> None:
    wrong = sorted(f"{m} imports {t}" for m, t in GRAPH.edges if t == "jobs" or t.startswith("jobs."))

    assert wrong == []


def test_the_subtask_reads_operators_through_their_contract_not_by_probing() -> None:
    _, tree = MODULES["onceflow.engine.task"]
    probes = sorted(
        f"line {node.lineno}: {node.func.id}("
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"getattr", "hasattr"}
    )

    assert probes == []
