"""PIKACI-003: branch-lane path filters live in the forge manifest only."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, List, Tuple

from .context import Context, Entry, check
from .results import Problem, Result, verdict
from .sources import (
    CATALOG_RELPATH,
    LIBRARY,
    MANIFEST_RELPATH,
    SKIP_DIRS,
    Source,
    is_str,
    walk,
)

PATH_FILTER_KEYS = frozenset({"paths", "filters", "path_filters", "path_globs"})
_TOML_FILTER = re.compile(r'^\s*"?(paths|filters|path_filters|path_globs)"?\s*=\s*\[', re.I)
_SHELL_FILTER = re.compile(r"\b(paths|filters|path_filters|path_globs)=\(", re.I)


@check("PIKACI-003")
def single_path_filter_source(ctx: Context, entry: Entry) -> Result:
    """A key, keyword or assigned name in PATH_FILTER_KEYS (any case) bound to a non-empty
    list/tuple/set literal of strings in Python (dodo.py, the library, scripts/), a TOML line
    `paths = [` (same keys) in any TOML file but the manifest, or a shell array `paths=(` in
    scripts/. Tests, hidden directories and nested repositories (a directory below the root
    with a `dodo.py` of its own, e.g. examples/pika, checked by its own invariants) are not
    scanned."""
    root = ctx.root
    problems: List[Problem] = []
    # dodo.py and the library as the other checks parsed them; scripts/ parsed here
    catalog = ctx.catalog.source
    python = [catalog] if catalog.path.is_file() else []
    python += ctx.library
    others: List[Path] = []
    for path in walk(root, "scripts", "*"):
        if path.suffix == ".py" or _has_python_shebang(path):
            python.append(Source(root, path))
        elif path.suffix != ".toml":
            others.append(path)
    for source in python:
        if source.error is not None:
            problems.append(source.error)
            continue
        for where, key in _python_filters(source):
            problems.append((f"{where} declares a path-filter list `{key}`", where))
    tomls = [
        path
        for path in sorted(root.rglob("*.toml"))
        if _scanned(root, path) and path.relative_to(root).as_posix() != MANIFEST_RELPATH
    ]
    for path, pattern in [(p, _TOML_FILTER) for p in tomls] + [(p, _SHELL_FILTER) for p in others]:
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            match = pattern.search(line)
            if match:
                where = f"{rel}:{lineno}"
                problems.append((f"{where} declares a path-filter list `{match.group(1)}`", where))
    return verdict(
        problems,
        f"no path-filter list outside {MANIFEST_RELPATH}",
        [CATALOG_RELPATH, f"{LIBRARY}/", "scripts/", MANIFEST_RELPATH],
    )


def _scanned(root: Path, path: Path) -> bool:
    parts = path.relative_to(root).parts
    if any(part in SKIP_DIRS or part.startswith(".") or part == "tests" for part in parts[:-1]):
        return False
    nested = (root.joinpath(*parts[:depth]) for depth in range(1, len(parts)))
    return not any((directory / CATALOG_RELPATH).is_file() for directory in nested)


def _has_python_shebang(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            first = handle.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def _python_filters(source: Source) -> Iterator[Tuple[str, str]]:
    for node in source.nodes():
        pairs: List[Tuple[str, ast.AST]] = []
        if isinstance(node, ast.keyword) and node.arg is not None:
            pairs.append((node.arg, node.value))
        elif isinstance(node, ast.Dict):
            pairs.extend(
                (str(key.value), value)
                for key, value in zip(node.keys, node.values)
                if key is not None and isinstance(key, ast.Constant) and isinstance(key.value, str)
            )
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = getattr(target, "id", None) or getattr(target, "attr", None)
                if isinstance(name, str):
                    pairs.append((name, node.value))
        for key, value in pairs:
            if key.lower() in PATH_FILTER_KEYS and _string_list(value):
                yield source.at(value), key


def _string_list(node: ast.AST) -> bool:
    return (
        isinstance(node, (ast.List, ast.Tuple, ast.Set))
        and bool(node.elts)
        and all(is_str(item) for item in node.elts)
    )
