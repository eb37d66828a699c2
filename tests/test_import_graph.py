"""The import graph of src/mechdiff has no cycles: data flows one way (DESIGN.md, issue #21).

Every import counts, also those inside functions (a deferred import is still a
dependency); only ``if TYPE_CHECKING:`` blocks are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Names of mechdiff modules (or packages) one module imports, wherever in its body."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name.split(".")[0] == "mechdiff"}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the mechdiff modules it imports (a package import points at its __init__)."""
    files = {_module_name(p, src): p for p in (src / "mechdiff").rglob("*.py")}
    graph = {}
    for module, path in files.items():
        names = _imported(ast.parse(path.read_text(encoding="utf-8")), module, path.name == "__init__.py")
        graph[module] = {n for n in names if n in files and n != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for root in sorted(graph):
        if state.get(root):
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_the_checker_finds_a_planted_cycle_and_resolves_relative_imports(tmp_path):
    pkg = tmp_path / "mechdiff"
    (pkg / "store").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "store" / "__init__.py").write_text("from .reader import x\n")
    (pkg / "store" / "reader.py").write_text("def f():\n    from mechdiff.lens import y\n")
    (pkg / "lens.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mechdiff.api\n"
                                 "from mechdiff.store import reader\n")
    (pkg / "api.py").write_text("import mechdiff.lens\n")
    graph = import_graph(tmp_path)
    assert graph["mechdiff.store"] == {"mechdiff.store.reader"}
    assert graph["mechdiff.lens"] == {"mechdiff.store", "mechdiff.store.reader"}  # TYPE_CHECKING left out
    assert find_cycle(graph) == ["mechdiff.lens", "mechdiff.store", "mechdiff.store.reader", "mechdiff.lens"]
    (pkg / "store" / "reader.py").write_text("x = 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_src_mechdiff_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
