"""No import cycles inside edgekd: the import graph, read from the source with ast, has no
strongly connected component of more than one module.

Every import counts, the ones inside functions too (a lazy import hides a cycle from Python,
not from the design) and relative ones; `from __future__` does not. A failure prints each
cycle as one real chain of imports, `a -> b -> c -> a`, so the edge to cut is in the message."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package at `root`."""
    found = {}
    for file in sorted(root.rglob("*.py")):
        parts = list(file.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = file
    return found


def imported(module: str, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> set[str]:
    """The package's modules that `node` (in `module`) imports: a name that is not a module
    (`from a.b import function`) counts as its module."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            package = module.split(".") if mods[module].name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    root = next(iter(mods)).split(".")[0]
    targets = set()
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name.split(".")[0] == root and name != module:
            targets.add(name)
    return targets


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, anywhere in its source."""
    mods = modules(root)
    graph = {}
    for module, file in mods.items():
        graph[module] = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= imported(module, node, mods)
    return graph


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
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


def chain(graph: dict[str, set[str]], component: list[str]) -> str:
    """One real cycle through the component's first module, shortest first: 'a -> b -> a'."""
    start, inside = component[0], set(component)
    came_from = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node] & inside):
            if target == start:
                path = [node]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return " -> ".join([*reversed(path), start])
            if target not in came_from:
                came_from[target] = node
                queue.append(target)
    raise AssertionError(f"{component} is not a cycle")  # a component always holds one


def cycles(root: Path) -> list[str]:
    graph = import_graph(root)
    return [chain(graph, component) for component in components(graph)]


def test_edgekd_has_no_import_cycles():
    found = cycles(PACKAGE)
    assert not found, f"{len(found)} import cycle(s) in edgekd/ (cut one import of each):\n" + "\n".join(found)


def test_the_finder_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The check itself: a cycle made of a lazy import and a relative one is found and printed
    as its chain; `from __future__` and an import of a name (not a module) do not make one."""
    package = tmp_path / "toy"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from __future__ import annotations\n",
        "a.py": "from __future__ import annotations\n\ndef f():\n    from toy.sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "from ..c import value\n",
        "c.py": "import os\n\ndef value():\n    from . import a\n",
        "d.py": "from toy.c import value\n",  # imports into the cycle, is not part of it
    }
    for name, text in files.items():
        (package / name).write_text(text)
    assert cycles(package) == ["toy.a -> toy.sub.b -> toy.c -> toy.a"]
    (package / "c.py").write_text("def value():\n    return 1\n")
    assert cycles(package) == []
