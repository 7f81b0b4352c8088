"""PIKACI-002: the library knows no catalog: no dodo import, no catalog id as a literal."""

from __future__ import annotations

import ast
import re

from .context import Context, Entry, check
from .results import Result, verdict
from .sources import CATALOG_RELPATH, LIBRARY, imported_modules, is_str, is_within, parse_errors

_TASK_NAME = re.compile(r"^[a-z_]+:(.+)$")


@check("PIKACI-002")
def library_independence(ctx: Context, entry: Entry) -> Result:
    """No `import dodo` (or import_module/__import__/run_module of "dodo") in the library, and
    no string literal (docstrings aside) equal to a catalog id or `<word>:<id>`. An id equal to
    the library's own name is not compared: the library names itself."""
    problems = ctx.catalog_problems() + parse_errors(ctx.library)
    ids, id_problems = ctx.catalog.ids() if not problems else ({}, [])
    problems += id_problems
    compared = {value for value in ids if value != LIBRARY}
    for source in ctx.library:
        for node in source.nodes():
            module = next((m for m in imported_modules(node) if is_within(m, "dodo")), None)
            if module is not None:
                problems.append((f"{source.at(node)} imports `{module}`", source.at(node)))
            if not is_str(node) or id(node) in source.docstrings:
                continue
            assert isinstance(node, ast.Constant)
            text = str(node.value)
            match = _TASK_NAME.match(text)
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
