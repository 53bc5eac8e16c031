"""The package's import graph has no cycle: a module never needs, even lazily inside a
function, a module that needs it (imports under `if TYPE_CHECKING:` are annotations only and
do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pluralign

ROOT = Path(pluralign.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The pluralign modules `path` imports anywhere but under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("pluralign"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pluralign")}
    return {m for m in found if m in modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages re-export
    graph = {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}
    assert _cycles(graph) == []


#: The layers, lowest first: a module may import its own layer and those below, never above
#: (the data flows ingest -> reference -> em -> aggregate -> evaluate -> report; README
#: "Layout").
LAYERS = ("core", "settings", "runfolder", "ingest", "simulate", "lm", "backends", "em",
          "aggregate", "personalize", "stages", "cli")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m))


def test_the_layer_check_sees_an_upward_import():
    assert _upward({"pluralign.core.data": {"pluralign.em.estimator"}}) == [
        "pluralign.core.data -> pluralign.em.estimator"]
    assert _upward({"pluralign.em.estimator": {"pluralign.core.data"}}) == []


def test_every_module_sits_in_a_layer_and_no_import_points_up():
    modules = _modules()
    assert [m for m in modules if m != "pluralign" and _layer(m) is None] == []
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _upward(graph) == []


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    """Lines per module and per class."""
    modules, classes = {}, {}
    for name, path in _modules().items():
        text = path.read_text()
        modules[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                classes[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    return modules, classes


def test_modules_and_classes_stay_small_enough_to_read():
    modules, classes = _sizes()
    assert {m: n for m, n in modules.items() if n > 450} == {}
    assert {c: n for c, n in classes.items() if n > 300} == {}
    assert modules["pluralign.cli"] < 250  # the command line only wires commands to drivers
