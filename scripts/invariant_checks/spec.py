"""Reading TOML files and the invariants spec; every failure is a one-line SpecError."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Set

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SPEC_RELPATH = "invariants/invariants.toml"
KINDS = ("must", "allowed")


class SpecError(Exception):
    """A bad spec or an unreadable TOML file: one line naming the file."""


def load_toml(path: Path) -> Dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    try:
        result: Dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # the parser's message names line and column; keep it on one line whatever its form
        raise SpecError(f"{path}: invalid TOML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        # the parser recurses once per nested array or inline table
        raise SpecError(f"{path}: invalid TOML: nested too deeply") from None
    return result


def load_spec(path: Path) -> Dict[str, Any]:
    """Validated as upstream does; SpecError with upstream's messages."""
    spec = load_toml(path)
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
