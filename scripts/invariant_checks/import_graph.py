"""The library's module graph from its import statements, and the cycles in it."""

from __future__ import annotations

import ast
from collections import deque
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .sources import LIBRARY, Source, imported_modules, is_within


def module_name(rel: str) -> str:
    """`pikaci/a/b.py` -> `pikaci.a.b`; `pikaci/a/__init__.py` -> `pikaci.a`."""
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(test: ast.AST) -> bool:
    """`TYPE_CHECKING` or `<module>.TYPE_CHECKING` (typing.TYPE_CHECKING)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` but the bodies of `if TYPE_CHECKING:`, which never run (their
    `else:` does). Iterative: a deeply nested file must not exhaust the stack."""
    pending: List[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


class ImportGraph:
    """Module -> imported module -> line of the first such import, for the modules of the
    library. Only imports that run count, wherever they are: at module level, in functions and
    methods, in `try:`; the bodies of `if TYPE_CHECKING:` do not."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.files: Dict[str, str] = {}  # module -> its path relative to the root
        parsed: List[Tuple[str, Source]] = []
        for source in sources:
            name = module_name(source.rel)
            self.files[name] = source.rel
            if source.tree is not None:
                parsed.append((name, source))
        self.edges: Dict[str, Dict[str, int]] = {name: {} for name in self.files}
        for name, source in parsed:
            package = name if source.rel.endswith("/__init__.py") else name.rpartition(".")[0]
            assert source.tree is not None
            for target, line in self._imports(source.tree, package):
                if target != name:
                    known = self.edges[name].get(target)
                    self.edges[name][target] = line if known is None else min(known, line)

    def where(self, importer: str, imported: str) -> str:
        return f"{self.files[importer]}:{self.edges[importer][imported]}"

    def _imports(self, tree: ast.AST, package: str) -> Iterator[Tuple[str, int]]:
        for node in runtime_nodes(tree):
            line = getattr(node, "lineno", 1)
            if isinstance(node, ast.ImportFrom):
                base = _from_base(node, package)
                if base is None or not is_within(base, LIBRARY):
                    continue
                for alias in node.names:
                    # `from pikaci.x import y` imports the module pikaci.x.y when there is one
                    submodule = f"{base}.{alias.name}"
                    known = alias.name != "*" and submodule in self.files
                    target = submodule if known else self._nearest(base)
                    if target is not None:
                        yield target, line
                continue
            for imported in imported_modules(node):
                target = self._nearest(imported) if is_within(imported, LIBRARY) else None
                if target is not None:
                    yield target, line

    def _nearest(self, dotted: str) -> Optional[str]:
        """`dotted` or its closest enclosing module that is a file of the library."""
        while dotted and dotted not in self.files:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def cycles(self) -> List[List[str]]:
        """Cycles as `[a, b, ..., a]`: per strongly connected component, from its first module
        (sorted) the shortest cycle through each module no earlier cycle passed through, so
        every module of a component is named at least once. Deterministic."""
        found: List[List[str]] = []
        for component in strongly_connected(self.edges):
            if len(component) < 2:
                continue  # self-imports were dropped: a single module is no cycle
            members = set(component)
            covered: Set[str] = set()
            for start in component:
                if start not in covered:
                    cycle = shortest_cycle(self.edges, start, members)
                    covered.update(cycle)
                    found.append(cycle)
        return found


def _from_base(node: ast.ImportFrom, package: str) -> Optional[str]:
    """The absolute module of `from <base> import ...` written in `package`; None when a
    relative import climbs above the top-level package."""
    if node.level == 0:
        return node.module
    parts = package.split(".") if package else []
    keep = len(parts) - (node.level - 1)
    if keep <= 0:
        return None
    base = ".".join(parts[:keep])
    return f"{base}.{node.module}" if node.module else base


def strongly_connected(edges: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """Tarjan's strongly connected components, each sorted, in a deterministic order (nodes and
    successors visited sorted). Iterative, so a long import chain cannot hit the recursion
    limit."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def visit(node: str) -> Iterator[str]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        return iter(sorted(edges.get(node, {})))

    for root in sorted(edges):
        if root in index:
            continue
        work: List[Tuple[str, Iterator[str]]] = [(root, visit(root))]
        while work:
            node, successors = work[-1]
            descended = False
            for successor in successors:
                if successor not in index:
                    work.append((successor, visit(successor)))
                    descended = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: List[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def shortest_cycle(edges: Dict[str, Dict[str, int]], start: str, members: Set[str]) -> List[str]:
    """The shortest path `start -> ... -> start` inside `members` (breadth first, successors
    sorted); `start` must lie on a cycle within `members`."""
    parents: Dict[str, str] = {}
    queue: Deque[str] = deque([start])
    while queue and start not in parents:
        node = queue.popleft()
        for successor in sorted(edges[node]):
            if successor in members and successor not in parents:
                parents[successor] = node
                queue.append(successor)
    path = [start]
    node = parents[start]
    while node != start:
        path.append(node)
        node = parents[node]
    path.append(start)
    path.reverse()
    return path
