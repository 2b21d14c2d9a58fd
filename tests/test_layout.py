"""The package's import graph has no cycles, counting imports inside functions too (a lazy import
that closes a cycle still ties two modules together: neither can be read or moved alone)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mathrl"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert "mathrl.grading.math_answers" in graph["mathrl.grading"]  # the graph sees lazy imports
    assert cycles(graph) == []


# Packages by concept, highest first: a package imports only packages below it (and the top-level
# basics: settings, records, errors, files, provenance, memory, distributed).
LAYERS = ("cli", "experiments", "report", "train", "eval", "engine", "prompts", "tasks", "grading")


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def imports_into(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[tuple[str, str]]:
    graph = import_graph()
    return sorted((m, t) for m, targets in graph.items() if package_of(m) in packages
                  for t in targets if package_of(t) in forbidden)


def test_the_graph_sees_every_package():
    graph = import_graph()
    assert {package_of(m) for m in graph} >= set(LAYERS)
    assert imports_into(("cli",), ("experiments",))  # the check finds edges where there are some


def test_grading_and_the_engine_import_nothing_from_training_experiments_or_the_report():
    """The grader and the generator sit under everything that trains, runs or reports: a reward, an
    evaluation and a report reach them, never the other way round (lazy imports count too)."""
    assert imports_into(("grading", "engine"), ("train", "experiments", "report")) == []


def test_no_package_imports_a_package_above_it_except_the_known_ones():
    above = {p: LAYERS[:i] for i, p in enumerate(LAYERS)}
    upward = sorted((m, t) for p in LAYERS for m, t in imports_into((p,), above[p]))
    # Known debts, to shrink rather than grow: the completion verdict cuts at stop strings (engine) by a
    # format (prompts) for a task, and answer types read a format's markers.
    assert upward == [
        ("mathrl.grading.answers", "mathrl.prompts.formats"),
        ("mathrl.grading.verdict", "mathrl.engine.decoding"),
        ("mathrl.grading.verdict", "mathrl.prompts.formats"),
        ("mathrl.grading.verdict", "mathrl.tasks.base"),
    ]
    basics = [m for m in import_graph() if m.count(".") == 1 and package_of(m) is None and m != "mathrl.__main__"]
    assert basics
    assert [(m, t) for m in basics for t in import_graph()[m] if package_of(t)] == []
