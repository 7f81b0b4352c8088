"""PIKACI-004 and PIKACI-006: what every Lane(...) of dodo.py declares explicitly."""

from __future__ import annotations

import ast
from typing import List, Set

from .context import Context, Entry, check
from .results import Result, verdict
from .sources import CATALOG_RELPATH, LIBRARY, call_name, is_str, parse_errors

_SHAPE_CALLS = frozenset({"startswith", "endswith", "match", "search", "fullmatch", "findall"})
_SHAPE_ATTRS = frozenset({"id", "command"})
_SHAPE_NAMES = frozenset({"lane_id", "job_id", "target_id", "command"})
_CHOICE_ATTRS = frozenset({"placement", "runtime"})


@check("PIKACI-004")
def explicit_execution(ctx: Context, entry: Entry) -> Result:
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
        if why is None and not (isinstance(value, ast.Call) and call_name(value) == "Execution"):
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
        and is_str(node)
        and isinstance(node, ast.Constant)
    }
    for source in ctx.library:
        if source.rel == catalog_module:
            continue
        for node in source.nodes():
            if call_name(node) == "Execution":
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
        if isinstance(node, ast.Call) and call_name(node) in _SHAPE_CALLS:
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


@check("PIKACI-006")
def lanes_have_timeouts(ctx: Context, entry: Entry) -> Result:
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
