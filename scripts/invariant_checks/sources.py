"""The checked repository's layout and its Python files, parsed with `ast`, never imported."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Set

from .results import Problem

MANIFEST_RELPATH = "ci/forge-lanes.toml"
CATALOG_RELPATH = "dodo.py"
LIBRARY = "pikaci"  # the library package (a directory of the checked repository)
SKIP_DIRS = {"__pycache__", "node_modules", "result"}
# calls that import the module named by their first argument
IMPORT_CALLS = ("import_module", "__import__", "run_module")


def walk(root: Path, relative: str, pattern: str) -> List[Path]:
    """The files under `root/relative` matching `pattern`, sorted, hidden and SKIP_DIRS aside."""
    base = root / relative
    if not base.is_dir():
        return []
    found = []
    for path in sorted(base.rglob(pattern)):
        parts = path.relative_to(root).parts
        if any(part in SKIP_DIRS or part.startswith(".") for part in parts):
            continue
        if path.is_file():
            found.append(path)
    return found


class Source:
    """A parsed Python file and where its docstrings are."""

    def __init__(self, root: Path, path: Path) -> None:
        self.path = path
        self.rel = path.relative_to(root).as_posix()
        self.error: Optional[Problem] = None
        self.tree: Optional[ast.Module] = None
        self.docstrings: Set[int] = set()
        try:
            self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=self.rel)
        except (OSError, SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            line = getattr(exc, "lineno", None) or 1
            message = " ".join(str(exc).split()) or type(exc).__name__
            self.error = (f"{self.rel} cannot be parsed: {message}", f"{self.rel}:{line}")
            return
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and is_str(body[0].value):
                    self.docstrings.add(id(body[0].value))

    def at(self, node: ast.AST) -> str:
        return f"{self.rel}:{getattr(node, 'lineno', 1)}"

    def nodes(self) -> Iterator[ast.AST]:
        return iter(ast.walk(self.tree)) if self.tree is not None else iter(())


def is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def call_name(node: ast.AST) -> Optional[str]:
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def unparse(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except (AttributeError, ValueError):
        return type(node).__name__


def imported_modules(node: ast.AST) -> List[str]:
    """The absolute module names `node` imports: every name of an `import`, the module of an
    absolute `from ... import`, the string literal given to import_module/__import__/
    run_module. Relative imports name no absolute module and give none."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module] if node.level == 0 and node.module else []
    if call_name(node) in IMPORT_CALLS:
        assert isinstance(node, ast.Call)
        first = node.args[0] if node.args else None
        if first is not None and isinstance(first, ast.Constant) and isinstance(first.value, str):
            return [first.value]
    return []


def is_within(module: str, package: str) -> bool:
    """`module` is `package` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def library_sources(root: Path) -> List[Source]:
    return [Source(root, path) for path in walk(root, LIBRARY, "*.py")]


def parse_errors(sources: Sequence[Source]) -> List[Problem]:
    return [source.error for source in sources if source.error is not None]
