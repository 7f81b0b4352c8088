#!/usr/bin/env python3
"""Check this repository's invariants (`invariants/invariants.toml`) deterministically.

    python scripts/check_invariants.py [--root DIR] [--spec FILE] [--json] [--json-out FILE]

Every `must` invariant is decided by a check function registered under its id; an invariant
without one, and every `allowed` invariant, is reported UNCHECKED, never PASS. Output:

    invariants: <name>
    PASS|FAIL|UNCHECKED <id>: <reason>
      evidence: <path>[:<line>]

`--json` prints `{"name", "results": [{"id", "status", "reason", "evidence"}]}` instead
(status `pass`, `fail` or `unchecked`); `--json-out FILE` writes it next to the text output.
Exit status: 1 when an invariant fails, 2 for a bad spec or bad arguments (one line on stderr),
0 otherwise.

The catalog is read from `dodo.py` with `ast`, never imported: nothing of the repository runs.
An expression the checks need but cannot resolve statically (a call, `**kwargs`, a name not
bound to a constant) fails the invariant with a reason naming file:line. Standard library
only; runs on Python 3.9 (without `tomllib` a small parser reads the TOML subset used here).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

ROOT = Path(__file__).resolve().parents[1]
SPEC_RELPATH = "invariants/invariants.toml"
MANIFEST_RELPATH = "ci/forge-lanes.toml"
CATALOG_RELPATH = "dodo.py"
LIBRARY = "pikaci"  # the library package (a directory of the checked repository)
KINDS = ("must", "allowed")

PASS, FAIL, UNCHECKED = "pass", "fail", "unchecked"


class SpecError(Exception):
    """A bad spec or an unreadable TOML file: one line."""


# -- TOML ---------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INT = re.compile(r"[+-]?(0|[1-9](_?[0-9])*)")
_ESCAPES = {'"': '"', "\\": "\\", "b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r"}


def _load_tomllib() -> Any:
    try:
        return importlib.import_module("tomllib")
    except ImportError:
        return None


def load_toml(path: Path, builtin: bool = False) -> Dict[str, Any]:
    """`tomllib` when there is one (and `builtin` is false), else `parse_toml`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    toml = None if builtin else _load_tomllib()
    if toml is None:
        return parse_toml(text, str(path))
    try:
        result: Dict[str, Any] = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None
    return result


def parse_toml(text: str, name: str) -> Dict[str, Any]:
    """The TOML subset of the spec and the forge manifest.

    Comments, `key = value` with bare or "quoted" keys, basic and literal one-line strings,
    integers, booleans, arrays of those (over several lines too), `[table]` and
    `[[array.of.tables]]` headers with dotted names. Anything else is a one-line error naming
    the file and line.
    """
    root: Dict[str, Any] = {}
    current = root
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        lineno = index + 1
        line = lines[index]
        index += 1
        stripped = _strip_comment(line, name, lineno).strip()
        if not stripped:
            continue
        if stripped.startswith("["):
            current = _open_table(root, stripped, name, lineno)
            continue
        key, sep, rest = _split_key(stripped, name, lineno)
        if not sep:
            raise SpecError(f"{name}:{lineno}: expected `key = value`")
        value_text = rest.strip()
        if value_text.startswith("[") and not _array_closed(value_text, name, lineno):
            # a multi-line array: read until the brackets balance
            parts = [value_text]
            while True:
                if index >= len(lines):
                    raise SpecError(f"{name}:{lineno}: unterminated array")
                parts.append(_strip_comment(lines[index], name, index + 1).strip())
                index += 1
                if _array_closed(" ".join(parts), name, lineno):
                    break
            value_text = " ".join(parts)
        if key in current:
            raise SpecError(f"{name}:{lineno}: duplicate key `{key}`")
        current[key] = _parse_value(value_text, name, lineno)
    return root


def _unquoted(text: str) -> Iterator[Tuple[int, str]]:
    """(position, character) of every character of `text` outside a string literal."""
    quote: Optional[str] = None
    escaped = False
    for position, char in enumerate(text):
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        else:
            yield position, char


def _strip_comment(line: str, name: str, lineno: int) -> str:
    for position, char in _unquoted(line):
        if char == "#":
            return line[:position]
    return line


def _split_key(text: str, name: str, lineno: int) -> Tuple[str, str, str]:
    if text.startswith('"'):
        key, rest = _read_string(text, name, lineno)
    else:
        match = _BARE_KEY.match(text)
        if match is None:
            raise SpecError(f"{name}:{lineno}: unsupported TOML: expected a key")
        key, rest = match.group(0), text[match.end() :]
    rest = rest.lstrip()
    if rest.startswith("."):
        raise SpecError(f"{name}:{lineno}: unsupported TOML: dotted key")
    if not rest.startswith("="):
        return key, "", rest
    return key, "=", rest[1:]


def _open_table(root: Dict[str, Any], text: str, name: str, lineno: int) -> Dict[str, Any]:
    array = text.startswith("[[")
    closing = "]]" if array else "]"
    if not text.endswith(closing):
        raise SpecError(f"{name}:{lineno}: unsupported TOML: malformed table header")
    inner = text[2:-2] if array else text[1:-1]
    keys = [part.strip() for part in inner.split(".")]
    if not all(_BARE_KEY.fullmatch(key) for key in keys):
        raise SpecError(f"{name}:{lineno}: unsupported TOML: table names must be bare keys")
    table = root
    for key in keys[:-1]:
        found = table.setdefault(key, {})
        if isinstance(found, list) and found and isinstance(found[-1], dict):
            found = found[-1]
        if not isinstance(found, dict):
            raise SpecError(f"{name}:{lineno}: `{key}` is not a table")
        table = found
    last = keys[-1]
    if array:
        entries = table.setdefault(last, [])
        if not isinstance(entries, list):
            raise SpecError(f"{name}:{lineno}: `{last}` is not an array of tables")
        entry: Dict[str, Any] = {}
        entries.append(entry)
        return entry
    if last in table:
        raise SpecError(f"{name}:{lineno}: table `{last}` defined twice")
    new: Dict[str, Any] = {}
    table[last] = new
    return new


def _array_closed(text: str, name: str, lineno: int) -> bool:
    depth = 0
    for _, char in _unquoted(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
    return depth <= 0


def _read_string(text: str, name: str, lineno: int) -> Tuple[str, str]:
    """The string at the start of `text` and what follows it."""
    quote = text[0]
    if text.startswith(quote * 3):
        raise SpecError(f"{name}:{lineno}: unsupported TOML: multi-line string")
    if quote == "'":
        end = text.find("'", 1)
        if end < 0:
            raise SpecError(f"{name}:{lineno}: unterminated string")
        return text[1:end], text[end + 1 :]
    out: List[str] = []
    position = 1
    while position < len(text):
        char = text[position]
        if char == '"':
            return "".join(out), text[position + 1 :]
        if char == "\\":
            code = text[position + 1 : position + 2]
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
                position += 2
                continue
            if code in ("u", "U"):
                width = 4 if code == "u" else 8
                digits = text[position + 2 : position + 2 + width]
                if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise SpecError(f"{name}:{lineno}: invalid unicode escape")
                out.append(chr(int(digits, 16)))
                position += 2 + width
                continue
            raise SpecError(f"{name}:{lineno}: invalid escape in string")
        out.append(char)
        position += 1
    raise SpecError(f"{name}:{lineno}: unterminated string")


def _parse_value(text: str, name: str, lineno: int) -> Any:
    value, rest = _parse_one(text, name, lineno)
    if rest.strip():
        raise SpecError(f"{name}:{lineno}: unexpected text after the value")
    return value


def _parse_one(text: str, name: str, lineno: int) -> Tuple[Any, str]:
    text = text.lstrip()
    if not text:
        raise SpecError(f"{name}:{lineno}: missing value")
    if text[0] in "\"'":
        return _read_string(text, name, lineno)
    if text[0] == "[":
        items: List[Any] = []
        rest = text[1:].lstrip()
        while not rest.startswith("]"):
            if rest.startswith("["):
                raise SpecError(f"{name}:{lineno}: unsupported TOML: nested array")
            item, rest = _parse_one(rest, name, lineno)
            items.append(item)
            rest = rest.lstrip()
            if rest.startswith(","):
                rest = rest[1:].lstrip()
            elif not rest.startswith("]"):
                raise SpecError(f"{name}:{lineno}: expected `,` or `]` in array")
        return items, rest[1:]
    for word, value in (("true", True), ("false", False)):
        if text.startswith(word) and not _BARE_KEY.match(text[len(word) : len(word) + 1]):
            return value, text[len(word) :]
    match = _INT.match(text)
    if match is not None and not re.match(r"[0-9A-Za-z_.:+-]", text[match.end() :][:1]):
        return int(match.group(0).replace("_", "")), text[match.end() :]
    kind = "inline table" if text.startswith("{") else "value"
    raise SpecError(f"{name}:{lineno}: unsupported TOML {kind}: {text.split()[0]}")


# -- the spec -------------------------------------------------------------------------------------


def load_spec(path: Path, builtin_toml: bool = False) -> Dict[str, Any]:
    """Validated as upstream does; SpecError with upstream's messages."""
    spec = load_toml(path, builtin_toml)
    if spec.get("version") != 1:
        raise SpecError(f"unsupported invariants spec version in {path}")
    invariants = spec.get("invariant")
    if not isinstance(invariants, list) or not invariants:
        raise SpecError(f"{path} must define at least one [[invariant]] entry")
    ids: Set[str] = set()
    for entry in invariants:
        if not isinstance(entry, dict):
            raise SpecError(f"{path} contains a non-table [[invariant]] entry")
        invariant_id = entry.get("id")
        if not isinstance(invariant_id, str) or not invariant_id.strip():
            raise SpecError(f"{path} contains an invariant without a non-empty id")
        if invariant_id in ids:
            raise SpecError(f"{path} contains duplicate invariant id {invariant_id}")
        ids.add(invariant_id)
        if entry.get("kind") not in KINDS:
            raise SpecError(
                f"{path} invariant {invariant_id} has unsupported kind {entry.get('kind')!r}"
            )
        statement = entry.get("statement")
        if not isinstance(statement, str) or not statement.strip():
            raise SpecError(f"{path} invariant {invariant_id} must have a statement")
        scope = entry.get("scope", [])
        if not isinstance(scope, list) or any(not isinstance(item, str) for item in scope):
            raise SpecError(f"{path} invariant {invariant_id} must use a string array for scope")
    return spec


# -- findings -------------------------------------------------------------------------------------


class Result:
    def __init__(self, status: str, reason: str, evidence: Sequence[str]) -> None:
        self.status = status
        self.reason = reason
        self.evidence = list(evidence)


Problem = Tuple[str, str]  # (message, "path:line")


def verdict(problems: Sequence[Problem], passed: str, examined: Sequence[str]) -> Result:
    if not problems:
        return Result(PASS, passed, examined)
    evidence: List[str] = []
    for _, where in problems:
        if where not in evidence:
            evidence.append(where)
    return Result(FAIL, "; ".join(message for message, _ in problems), evidence)


# -- reading the repository statically ------------------------------------------------------------

SKIP_DIRS = {"__pycache__", "node_modules", "result"}


def _walk(root: Path, relative: str, pattern: str) -> List[Path]:
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
        except (OSError, SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None) or 1
            self.error = (f"{self.rel} cannot be parsed: {exc}", f"{self.rel}:{line}")
            return
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and _is_str(body[0].value):
                    self.docstrings.add(id(body[0].value))

    def at(self, node: ast.AST) -> str:
        return f"{self.rel}:{getattr(node, 'lineno', 1)}"

    def nodes(self) -> Iterator[ast.AST]:
        return iter(ast.walk(self.tree)) if self.tree is not None else iter(())


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _call_name(node: ast.AST) -> Optional[str]:
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


Value = Union[str, int, bool, ast.Call, None]


class Catalog:
    """The parts of `dodo.py` the checks need: Target, Lane and StagedPayloads calls, and the
    module-level names they use (string and integer constants, `Execution(...)` calls, names
    imported from `pikaci.catalog`, whose own constants are read the same way)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = Source(root, root / CATALOG_RELPATH)
        self.bindings: Dict[str, ast.AST] = {}
        self.imported: Dict[str, str] = {}
        self.library_constants: Dict[str, ast.AST] = {}
        tree = self.source.tree
        if tree is not None:
            self.bindings, self.imported = _module_bindings(tree)
        catalog_module = root / LIBRARY / "catalog.py"
        if catalog_module.is_file():
            library = Source(root, catalog_module)
            if library.tree is not None:
                self.library_constants, _ = _module_bindings(library.tree)

    def calls(self, name: str) -> List[ast.Call]:
        found = [node for node in self.source.nodes() if _call_name(node) == name]
        return [node for node in found if isinstance(node, ast.Call)]

    def resolve(self, node: ast.AST, depth: int = 0) -> Tuple[Value, Optional[str]]:
        """(value, None) or (None, why not). Calls come back as the Call node."""
        if depth > 10:
            return None, "too many indirections"
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, bool)):
            return node.value, None
        if isinstance(node, ast.Call):
            return node, None
        if isinstance(node, ast.Name):
            if node.id in self.bindings:
                return self.resolve(self.bindings[node.id], depth + 1)
            original = self.imported.get(node.id)
            if original is not None and original in self.library_constants:
                bound = self.library_constants[original]
                if isinstance(bound, ast.Constant) and isinstance(bound.value, (str, int)):
                    return bound.value, None
            return None, f"name `{node.id}` is not bound to a constant or a call"
        return None, f"`{_unparse(node)}` cannot be resolved statically"

    def argument(
        self, call: ast.Call, keyword: str, position: int
    ) -> Tuple[Optional[ast.AST], Optional[str]]:
        """The argument node, or (None, why) when it is missing or hidden in `*`/`**`."""
        for item in call.keywords:
            if item.arg == keyword:
                return item.value, None
        if any(item.arg is None for item in call.keywords) or any(
            isinstance(arg, ast.Starred) for arg in call.args
        ):
            return None, f"`{keyword}` is hidden in */** arguments"
        if len(call.args) > position:
            return call.args[position], None
        return None, f"no `{keyword}=`"

    def resolve_argument(
        self, call: ast.Call, keyword: str, position: int
    ) -> Tuple[Value, Optional[str]]:
        node, why = self.argument(call, keyword, position)
        if node is None:
            return None, why
        return self.resolve(node)

    def string_argument(self, call: ast.Call, keyword: str, position: int) -> Tuple[str, str]:
        """(value, "") or ("", why)."""
        value, why = self.resolve_argument(call, keyword, position)
        if why is not None:
            return "", why
        if not isinstance(value, str):
            return "", f"`{keyword}` is not a string"
        return value, ""

    def ids(self) -> Tuple[Dict[str, str], List[Problem]]:
        """Every target, lane and payload id of the catalog -> where it is declared."""
        found: Dict[str, str] = {}
        problems: List[Problem] = []
        for name in ("Target", "Lane", "StagedPayloads"):
            for call in self.calls(name):
                value, why = self.string_argument(call, "id", 0)
                if why:
                    problems.append((f"{name} id: {why}", self.source.at(call)))
                else:
                    found.setdefault(value, self.source.at(call))
        return found, problems


def _module_bindings(tree: ast.Module) -> Tuple[Dict[str, ast.AST], Dict[str, str]]:
    bindings: Dict[str, ast.AST] = {}
    imported: Dict[str, str] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                bindings[target.id] = statement.value
        elif (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and statement.value is not None
        ):
            bindings[statement.target.id] = statement.value
        elif isinstance(statement, ast.ImportFrom) and statement.module == f"{LIBRARY}.catalog":
            for alias in statement.names:
                imported[alias.asname or alias.name] = alias.name
    return bindings, imported


def _unparse(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except (AttributeError, ValueError):
        return type(node).__name__


def library_sources(root: Path) -> List[Source]:
    return [Source(root, path) for path in _walk(root, LIBRARY, "*.py")]


def parse_errors(sources: Sequence[Source]) -> List[Problem]:
    return [source.error for source in sources if source.error is not None]


class Context:
    def __init__(self, root: Path, builtin_toml: bool) -> None:
        self.root = root
        self.builtin_toml = builtin_toml
        self._catalog: Optional[Catalog] = None
        self._library: Optional[List[Source]] = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.root)
        return self._catalog

    @property
    def library(self) -> List[Source]:
        if self._library is None:
            self._library = library_sources(self.root)
        return self._library

    def catalog_problems(self) -> List[Problem]:
        """Problems that stop any catalog check: no dodo.py, or one that does not parse."""
        source = self.catalog.source
        if source.error is not None:
            if not source.path.is_file():
                return [(f"{CATALOG_RELPATH} is missing", CATALOG_RELPATH)]
            return [source.error]
        return []

    def catalog_calls(self, name: str, problems: List[Problem]) -> List[ast.Call]:
        """The `name(...)` calls of dodo.py, or none when `problems` already stop the check;
        finding none at all is itself a problem, added to `problems`."""
        if problems:
            return []
        calls = self.catalog.calls(name)
        if not calls:
            problems.append((f"no {name}(...) call in {CATALOG_RELPATH}", CATALOG_RELPATH))
        return calls


# -- the checks -----------------------------------------------------------------------------------

Check = Callable[[Context], Result]
CHECKS: Dict[str, Check] = {}


def check(invariant_id: str) -> Callable[[Check], Check]:
    def register(function: Check) -> Check:
        CHECKS[invariant_id] = function
        return function

    return register


@check("PIKACI-002")
def library_independence(ctx: Context) -> Result:
    """No `import dodo` (or import_module/__import__/run_module of "dodo") in the library, and
    no string literal (docstrings aside) equal to a catalog id or `<word>:<id>`. An id equal to
    the library's own name is not compared: the library names itself."""
    problems = ctx.catalog_problems() + parse_errors(ctx.library)
    ids, id_problems = ctx.catalog.ids() if not problems else ({}, [])
    problems += id_problems
    compared = {value for value in ids if value != LIBRARY}
    literal = re.compile(r"^[a-z_]+:(.+)$")
    for source in ctx.library:
        for node in source.nodes():
            module = _imported_module(node)
            if module is not None and (module == "dodo" or module.startswith("dodo.")):
                problems.append((f"{source.at(node)} imports `{module}`", source.at(node)))
            if not _is_str(node) or id(node) in source.docstrings:
                continue
            assert isinstance(node, ast.Constant)
            text = str(node.value)
            match = literal.match(text)
            named = text if text in compared else match.group(1) if match else None
            if named in compared:
                problems.append(
                    (
                        f"{source.at(node)} holds the catalog id {named!r} "
                        f"(declared at {ids[named]})",
                        source.at(node),
                    )
                )
    return verdict(
        problems,
        f"{LIBRARY}/ imports no dodo module and holds none of the catalog's "
        f"{len(compared)} ids as a string literal",
        [f"{LIBRARY}/", CATALOG_RELPATH],
    )


def _imported_module(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "dodo" or alias.name.startswith("dodo."):
                return alias.name
        return None
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return node.module
    if _call_name(node) in ("import_module", "__import__", "run_module"):
        assert isinstance(node, ast.Call)
        if node.args and _is_str(node.args[0]):
            first = node.args[0]
            assert isinstance(first, ast.Constant)
            return str(first.value)
    return None


PATH_FILTER_KEYS = frozenset({"paths", "filters", "path_filters", "path_globs"})
_TOML_FILTER = re.compile(r'^\s*"?(paths|filters|path_filters|path_globs)"?\s*=\s*\[', re.I)
_SHELL_FILTER = re.compile(r"\b(paths|filters|path_filters|path_globs)=\(", re.I)


@check("PIKACI-003")
def single_path_filter_source(ctx: Context) -> Result:
    """A key, keyword or assigned name in PATH_FILTER_KEYS (any case) bound to a non-empty
    list/tuple/set literal of strings in Python (dodo.py, the library, scripts/), a TOML line
    `paths = [` (same keys) in any TOML file but the manifest, or a shell array `paths=(` in
    scripts/. Tests and hidden directories are not scanned."""
    root = ctx.root
    problems: List[Problem] = []
    # dodo.py and the library as the other checks parsed them; scripts/ parsed here
    catalog = ctx.catalog.source
    python = [catalog] if catalog.path.is_file() else []
    python += ctx.library
    others: List[Path] = []
    for path in _walk(root, "scripts", "*"):
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
    return not any(
        part in SKIP_DIRS or part.startswith(".") or part == "tests" for part in parts[:-1]
    )


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
        and all(_is_str(item) for item in node.elts)
    )


_SHAPE_CALLS = frozenset({"startswith", "endswith", "match", "search", "fullmatch", "findall"})
_SHAPE_ATTRS = frozenset({"id", "command"})
_SHAPE_NAMES = frozenset({"lane_id", "job_id", "target_id", "command"})
_CHOICE_ATTRS = frozenset({"placement", "runtime"})


@check("PIKACI-004")
def explicit_execution(ctx: Context) -> Result:
    """dodo.py: every Lane(...) passes `execution=` (or the third positional argument)
    resolving to Execution(...) with `placement` and `runtime` both given as resolvable
    strings. Library: no Execution(...) outside pikaci/catalog.py, and no `if`/conditional
    expression whose test looks at the shape of an id or command (startswith/endswith/regex
    calls or `in` on `.id`, `.command`, `lane_id`, `job_id`, `target_id`, `command`) and whose
    branches name a placement or runtime (a PLACEMENT_*/RUNTIME_* name or its value in
    pikaci/catalog.py, a `placement`/`runtime` keyword or assignment)."""
    problems = ctx.catalog_problems() + parse_errors(ctx.library)
    catalog = ctx.catalog
    lanes = ctx.catalog_calls("Lane", problems)
    for lane in lanes:
        where = catalog.source.at(lane)
        value, why = catalog.resolve_argument(lane, "execution", 2)
        if why is None and not (isinstance(value, ast.Call) and _call_name(value) == "Execution"):
            why = "`execution` is not an Execution(...)"
        if why is not None:
            problems.append((f"{where}: lane execution: {why}", where))
            continue
        assert isinstance(value, ast.Call)
        for field, position in (("placement", 0), ("runtime", 1)):
            _, reason = catalog.string_argument(value, field, position)
            if reason:
                at = catalog.source.at(value)
                problems.append((f"{at}: Execution {field}: {reason}", at))
    catalog_module = f"{LIBRARY}/catalog.py"
    vocabulary = {
        str(node.value)
        for name, node in catalog.library_constants.items()
        if name.startswith(("PLACEMENT_", "RUNTIME_"))
        and _is_str(node)
        and isinstance(node, ast.Constant)
    }
    for source in ctx.library:
        if source.rel == catalog_module:
            continue
        for node in source.nodes():
            if _call_name(node) == "Execution":
                where = source.at(node)
                message = f"{where} constructs an Execution outside {catalog_module}"
                problems.append((message, where))
            elif isinstance(node, (ast.If, ast.IfExp)) and _inspects_shape(node.test):
                branches = node.body + node.orelse if isinstance(node, ast.If) else [node]
                if any(_names_choice(branch, vocabulary) for branch in branches):
                    where = source.at(node)
                    problems.append(
                        (f"{where} chooses a placement or runtime from an id or command", where)
                    )
    return verdict(
        problems,
        f"{len(lanes)} lanes declare placement and runtime explicitly; the library infers neither",
        [CATALOG_RELPATH, f"{LIBRARY}/"],
    )


def _inspects_shape(test: ast.AST) -> bool:
    for node in ast.walk(test):
        if isinstance(node, ast.Call) and _call_name(node) in _SHAPE_CALLS:
            operands: List[ast.AST] = list(node.args)
            if isinstance(node.func, ast.Attribute):
                operands.append(node.func.value)
            if any(_is_id_or_command(operand) for operand in operands):
                return True
        if (
            isinstance(node, ast.Compare)
            and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
            and any(_is_id_or_command(operand) for operand in node.comparators)
        ):
            return True
    return False


def _is_id_or_command(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr in _SHAPE_ATTRS) or (
        isinstance(node, ast.Name) and node.id in _SHAPE_NAMES
    )


def _names_choice(tree: ast.AST, vocabulary: Set[str]) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id.startswith(("PLACEMENT_", "RUNTIME_")):
            return True
        if isinstance(node, ast.Constant) and node.value in vocabulary:
            return True
        if isinstance(node, ast.keyword) and node.arg in _CHOICE_ATTRS:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = getattr(target, "id", None) or getattr(target, "attr", None)
                if name in _CHOICE_ATTRS:
                    return True
    return False


@check("PIKACI-005")
def staged_targets_match_manifest(ctx: Context) -> Result:
    """The targets of dodo.py with `payloads=` (not None) and the `staged_linux_target` values
    of the manifest's branch lanes are the same set, and no target is named twice on either
    side."""
    problems = ctx.catalog_problems()
    catalog = ctx.catalog
    staged: Dict[str, List[str]] = {}
    targets = ctx.catalog_calls("Target", problems)
    for target in targets:
        where = catalog.source.at(target)
        payloads, why = catalog.argument(target, "payloads", 4)
        if payloads is None and why == "no `payloads=`":
            continue
        if payloads is None:
            problems.append((f"{where}: target payloads: {why}", where))
            continue
        if isinstance(payloads, ast.Constant) and payloads.value is None:
            continue
        target_id, why = catalog.string_argument(target, "id", 0)
        if why:
            problems.append((f"{where}: target id: {why}", where))
            continue
        staged.setdefault(target_id, []).append(where)
    for target_id, places in staged.items():
        if len(places) > 1:
            problems.append(
                (f"staged target `{target_id}` is declared {len(places)} times", places[1])
            )
    manifest_path = ctx.root / MANIFEST_RELPATH
    lanes: Dict[str, List[str]] = {}
    if not manifest_path.is_file():
        problems.append(
            (f"{MANIFEST_RELPATH} is missing: staged targets have no forge lanes", MANIFEST_RELPATH)
        )
    else:
        manifest_problems, lanes = _manifest_staged_targets(manifest_path, ctx.builtin_toml)
        problems += manifest_problems
        if not manifest_problems:
            for target_id, lane_ids in lanes.items():
                if len(lane_ids) > 1:
                    problems.append(
                        (
                            f"`{target_id}` is the staged_linux_target of {len(lane_ids)} branch "
                            f"lanes ({', '.join(lane_ids)})",
                            _manifest_line(manifest_path, target_id),
                        )
                    )
            for target_id in sorted(set(staged) - set(lanes)):
                problems.append(
                    (
                        f"staged target `{target_id}` has no branch lane in {MANIFEST_RELPATH}",
                        staged[target_id][0],
                    )
                )
            for target_id in sorted(set(lanes) - set(staged)):
                problems.append(
                    (
                        f"branch lane `{lanes[target_id][0]}` names staged_linux_target "
                        f"`{target_id}`, which is no staged target of {CATALOG_RELPATH}",
                        _manifest_line(manifest_path, target_id),
                    )
                )
    names = ", ".join(sorted(staged)) or "none"
    return verdict(
        problems,
        f"staged targets ({names}) and the manifest's branch lanes match one to one",
        [CATALOG_RELPATH, MANIFEST_RELPATH],
    )


def _manifest_staged_targets(
    path: Path, builtin: bool
) -> Tuple[List[Problem], Dict[str, List[str]]]:
    try:
        manifest = load_toml(path, builtin)
    except SpecError as exc:
        return [(str(exc), MANIFEST_RELPATH)], {}
    if manifest.get("version") != 1:
        return [(f"{MANIFEST_RELPATH}: `version` must be 1", MANIFEST_RELPATH)], {}
    branch = manifest.get("branch", {})
    entries = branch.get("lanes", []) if isinstance(branch, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return [(f"{MANIFEST_RELPATH}: `branch.lanes` must be tables", MANIFEST_RELPATH)], {}
    lanes: Dict[str, List[str]] = {}
    problems: List[Problem] = []
    for index, entry in enumerate(entries):
        target = entry.get("staged_linux_target")
        if target is None:
            continue
        if not isinstance(target, str) or not target:
            problems.append(
                (
                    f"{MANIFEST_RELPATH}: branch lane {index}: `staged_linux_target` must be a "
                    "non-empty string",
                    MANIFEST_RELPATH,
                )
            )
            continue
        lanes.setdefault(target, []).append(str(entry.get("id", f"#{index}")))
    return problems, lanes


def _manifest_line(path: Path, target_id: str) -> str:
    pattern = re.compile(r"^\s*staged_linux_target\s*=\s*[\"']" + re.escape(target_id) + "[\"']")
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if pattern.match(line):
            return f"{MANIFEST_RELPATH}:{lineno}"
    return MANIFEST_RELPATH


@check("PIKACI-006")
def lanes_have_timeouts(ctx: Context) -> Result:
    """Every Lane(...) of dodo.py passes `timeout_secs=` (or the fourth positional argument)
    as a positive integer literal or a name bound to one (in dodo.py or pikaci/catalog.py)."""
    problems = ctx.catalog_problems()
    catalog = ctx.catalog
    lanes = ctx.catalog_calls("Lane", problems)
    for lane in lanes:
        where = catalog.source.at(lane)
        value, why = catalog.resolve_argument(lane, "timeout_secs", 3)
        if why is None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            why = "`timeout_secs` is not a positive integer"
        if why is not None:
            problems.append((f"{where}: lane timeout: {why}", where))
    return verdict(
        problems, f"all {len(lanes)} lanes declare a positive timeout_secs", [CATALOG_RELPATH]
    )


# -- running --------------------------------------------------------------------------------------


def evaluate(spec: Dict[str, Any], ctx: Context) -> List[Dict[str, Any]]:
    results = []
    for entry in spec["invariant"]:
        invariant_id = entry["id"]
        function = CHECKS.get(invariant_id)
        if entry["kind"] == "allowed":
            result = Result(UNCHECKED, "kind allowed: nothing to check", entry.get("scope", []))
        elif function is None:
            result = Result(UNCHECKED, "no deterministic check is registered for this id", [])
        else:
            result = function(ctx)
        results.append(
            {
                "id": invariant_id,
                "status": result.status,
                "reason": result.reason,
                "evidence": result.evidence,
            }
        )
    return results


def render(name: str, results: Sequence[Dict[str, Any]]) -> str:
    lines = [f"invariants: {name}"]
    for result in results:
        lines.append(f"{result['status'].upper()} {result['id']}: {result['reason']}")
        lines.extend(f"  evidence: {item}" for item in result["evidence"])
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Check the repository's invariants.")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to check")
    parser.add_argument("--spec", type=Path, help=f"the spec (default: <root>/{SPEC_RELPATH})")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to FILE")
    parser.add_argument("--builtin-toml", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    root = args.root.resolve()
    spec_path = args.spec if args.spec is not None else root / SPEC_RELPATH
    try:
        spec = load_spec(spec_path, args.builtin_toml)
    except SpecError as exc:
        print(f"check_invariants: {exc}", file=sys.stderr)
        return 2
    name = str(spec.get("name", "unnamed"))
    results = evaluate(spec, Context(root, args.builtin_toml))
    report = {"name": name, "results": results}
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(render(name, results))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if any(result["status"] == FAIL for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
