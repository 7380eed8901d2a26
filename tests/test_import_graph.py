"""The module import graph of ``obpipe`` has no cycle (issue 16, item 3).

Every ``import`` / ``from ... import`` of every module counts, at any depth: inside
functions, methods, ``if TYPE_CHECKING:`` blocks and ``try`` blocks too, because an import
hidden in a function is still a dependency (it only postpones the cycle to run time).
``from obpipe.pkg import name`` counts as an import of ``obpipe.pkg.name`` where that is a
module, else of ``obpipe.pkg``. A package's ``__init__`` is imported by every import of
one of its modules, so it is a node of its own: an ``__init__`` that imports its children
and is imported by one of them is a cycle too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "obpipe"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the obpipe modules it imports (at any depth), for every module under root."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    packages = {module_name(p, root) for p in root.rglob("__init__.py")}
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        this_pkg = name if name in packages else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = this_pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = []
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    targets.append(sub if sub in files else mod)
            else:
                continue
            for t in targets:
                if t != top and not t.startswith(top + "."):
                    continue
                while t and t not in files:  # "obpipe.x.y" where y is not a module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        colour[start] = GREY
        path = [start]
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = BLACK
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if colour.get(nxt, BLACK) == GREY:
                return path[path.index(nxt):] + [nxt]
            if colour.get(nxt) == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, sorted(graph[nxt])))
                path.append(nxt)
    return None


def test_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 30  # the package was found and parsed
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found(tmp_path: Path) -> None:
    """The check itself: a cycle through an import inside a function is reported."""
    pkg = tmp_path / "obpipe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from obpipe.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n    return g\n")
    (pkg / "c.py").write_text("import numpy\nfrom obpipe import a\n")
    graph = import_graph(pkg)
    assert graph["obpipe.a"] == {"obpipe.sub.b"}
    assert graph["obpipe.sub.b"] == {"obpipe.c"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"obpipe.a", "obpipe.sub.b", "obpipe.c"}
    (pkg / "c.py").write_text("import numpy\n")
    assert find_cycle(import_graph(pkg)) is None


#: the science packages (pure numpy, unit-tested without Dask) and the layers above them
SCIENCE = ("obpipe.photometry", "obpipe.luminosity", "obpipe.spectra", "obpipe.distance",
           "obpipe.binary", "obpipe.stats", "obpipe.simulate", "obpipe.io")
ABOVE_SCIENCE = ("obpipe.stages", "obpipe.engine", "obpipe.pipeline", "obpipe.cli",
                 "obpipe.report", "obpipe.validate", "obpipe.config")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_science_never_imports_stages_engine_or_cli() -> None:
    """The stage shape (DESIGN.md): science modules are pure numpy; a stage module maps them
    over the survey. So no science module imports a stage, the engine, the CLI, the report
    or the run configuration (the direction of every arrow is from the layers above)."""
    graph = import_graph(PACKAGE)
    science = [m for m in graph if _within(m, SCIENCE)]
    assert len(science) > 20
    upward = {m: sorted(d for d in deps if _within(d, ABOVE_SCIENCE))
              for m, deps in graph.items() if m in science}
    upward = {m: d for m, d in upward.items() if d}
    assert not upward, f"science modules importing the layers above them: {upward}"
