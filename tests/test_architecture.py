"""Architecture rules of the package, checked on its source (issue 23).

The package is read with ``ast``, not imported: every ``import`` and ``from ... import`` counts, at module
level, inside functions and under ``if TYPE_CHECKING:`` alike, relative or absolute. Each imported module
maps to its *unit*: a sub-package (``xlstm_export.reference``, ``xlstm_export.onnx``) or a top-level module
(``xlstm_export.compress``, ``xlstm_export.targets``); the package root is the unit ``xlstm_export``. Imports
within one unit are not edges. Modules loaded by name at run time (``importlib.import_module`` of a
registry string, e.g. ``Target.package``) are the registry's business and are not edges here.

Rules:

- (a) no import cycle between units;
- (b) the oracle imports nothing it checks: ``reference/`` reaches none of ``lowering``, ``compress``,
  ``validation``, ``targets`` or any target package (read from the registry), not even through another unit.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import xlstm_export

PACKAGE = "xlstm_export"
PACKAGE_DIR = Path(xlstm_export.__file__).resolve().parent
REFERENCE = f"{PACKAGE}.reference"
# what the reference checks, besides the target packages (read from the registry in the test)
CHECKED_BY_REFERENCE = tuple(f"{PACKAGE}.{u}" for u in ("lowering", "compress", "validation", "targets"))


# -- the import graph ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edge:
    src: str  # importing unit
    dst: str  # imported unit
    where: str  # "xlstm_export/reference/model.py:22"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def modules() -> Dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def unit_of(module: str) -> str:
    """``xlstm_export.onnx.runner`` -> ``xlstm_export.onnx``; ``xlstm_export.targets`` -> itself."""
    return ".".join(module.split(".")[:2])


def _imported(module: str, path: Path, node: ast.AST) -> List[str]:
    """The modules an import node names (``from pkg import name`` names ``pkg.name`` where that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        if not base:
            raise AssertionError(f"{path}:{node.lineno}: relative import above the package root")
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in modules() else source for a in node.names]


@lru_cache(maxsize=None)
def edges() -> Tuple[Edge, ...]:
    """Every import of one unit by another, one Edge per imported name, in file and line order."""
    out = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(PACKAGE_DIR.parent).as_posix()
        for node in ast.walk(tree):
            for target in _imported(module, path, node):
                if target != PACKAGE and not target.startswith(PACKAGE + "."):
                    continue  # a third-party or standard-library module
                src, dst = unit_of(module), unit_of(target)
                if src != dst:
                    out.append(Edge(src, dst, f"{where}:{node.lineno}"))
    return tuple(sorted(out, key=lambda e: (e.src, e.dst, e.where)))


def unit_graph(es: Sequence[Edge]) -> Dict[str, Dict[str, List[str]]]:
    """unit -> imported unit -> the places that import it."""
    g: Dict[str, Dict[str, List[str]]] = defaultdict(dict)
    for e in es:
        g[e.src].setdefault(e.dst, []).append(e.where)
    return g


def cycles(graph: Dict[str, Dict[str, List[str]]]) -> List[List[str]]:
    """One cycle (a list of units, the first repeated at the end) per strongly connected group of units."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack = set()
    groups: List[List[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, set(group), group[0]) for group in sorted(groups)]


def _cycle_in(graph: Dict[str, Dict[str, List[str]]], group: set, start: str) -> List[str]:
    """A shortest cycle through ``start`` inside ``group``: ``start``, then the shortest chain back to it."""
    inside = {v: {w: e for w, e in graph.get(v, {}).items() if w in group} for v in group}
    chains = [c for w in sorted(inside[start]) if (c := path_between(inside, w, {start})) is not None]
    if not chains:
        raise AssertionError(f"no cycle through {start} in {sorted(group)}")
    return [start] + min(chains, key=len)


def path_between(graph: Dict[str, Dict[str, List[str]]], start: str, goals: set) -> Optional[List[str]]:
    """A shortest chain of units from ``start`` to one of ``goals`` (None when none is reachable)."""
    parent: Dict[str, Optional[str]] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w in parent:
                    continue
                parent[w] = v
                if w in goals:
                    path = [w]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return path[::-1]
                nxt.append(w)
        frontier = nxt
    return None


def describe(graph: Dict[str, Dict[str, List[str]]], chain: Sequence[str]) -> str:
    """``a -> b (a.py:3) -> c (b/x.py:9, b/y.py:12)``: each edge with the places that make it."""
    parts = [chain[0]]
    for a, b in zip(chain, chain[1:]):
        parts.append(f"{b} ({', '.join(dict.fromkeys(graph[a][b]))})")
    return " -> ".join(parts)


# -- the checker reads what it must --------------------------------------------------------------------
def test_import_graph_sees_relative_absolute_and_function_level_imports():
    graph = unit_graph(edges())
    # a function-level relative import (compress.calibrate builds the reference model)
    assert "xlstm_export.reference" in graph["xlstm_export.compress"]
    # ``from .. import progress``: a module named by ``from package import name``
    assert "xlstm_export.progress" in graph["xlstm_export.frontends"]
    # every unit of the package is a node or is imported by one
    units = {unit_of(m) for m in modules()}
    assert {"xlstm_export.reference", "xlstm_export.targets", "xlstm_export.onnx", "xlstm_export.cli"} <= units


def test_cycle_finder_reports_each_group_once_with_a_closed_path():
    g = {"a": {"b": ["a.py:1"]}, "b": {"c": ["b.py:2"]}, "c": {"a": ["c.py:3"], "d": ["c.py:4"]},
         "d": {"e": ["d.py:1"]}, "e": {"d": ["e.py:1"]}, "f": {"a": ["f.py:1"]}}
    assert cycles(g) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert describe(g, ["a", "b", "c", "a"]) == "a -> b (a.py:1) -> c (b.py:2) -> a (c.py:3)"
    assert path_between(g, "f", {"e"}) == ["f", "a", "b", "c", "d", "e"]
    assert path_between(g, "e", {"a"}) is None


# -- (a) no import cycle between units -------------------------------------------------------------------
def test_no_import_cycle_between_units():
    graph = unit_graph(edges())
    found = cycles(graph)
    assert not found, "import cycles between units:\n" + "\n".join(describe(graph, c) for c in found)


# -- (b) the oracle imports nothing it checks -------------------------------------------------------------
def test_reference_reaches_nothing_it_checks():
    from xlstm_export.targets import TARGETS

    checked = set(CHECKED_BY_REFERENCE) | {unit_of(t.package) for t in TARGETS.values()}
    assert len(checked) >= len(CHECKED_BY_REFERENCE) + len(TARGETS)  # each target its own package
    graph = unit_graph(edges())
    chain = path_between(graph, REFERENCE, checked)
    assert chain is None, f"the reference imports what it checks: {describe(graph, chain)}"
