"""PIKACI-007 and PIKACI-008: how the library's modules may import (rooms and doors)."""

from __future__ import annotations

from typing import Any, List, Set, Tuple

from .context import Context, Entry, check
from .import_graph import ImportGraph
from .results import Problem, Result, verdict
from .sources import LIBRARY, imported_modules, is_within, parse_errors
from .spec import SPEC_RELPATH


@check("PIKACI-007")
def no_import_cycles(ctx: Context, entry: Entry) -> Result:
    """No cycle in the graph of imports among the library's modules, lazy imports inside
    functions included and `if TYPE_CHECKING:` bodies excluded (see ImportGraph). Each cycle
    is reported as `pikaci.a -> pikaci.b -> pikaci.a` at the file:line of its first import."""
    problems = parse_errors(ctx.library)
    graph = ImportGraph(ctx.library)
    for cycle in graph.cycles():
        where = graph.where(cycle[0], cycle[1])
        problems.append((f"{where}: import cycle {' -> '.join(cycle)}", where))
    return verdict(
        problems,
        f"no import cycle among the {len(graph.files)} modules of {LIBRARY}/, "
        "lazy imports included",
        [f"{LIBRARY}/"],
    )


@check("PIKACI-008")
def confined_import(ctx: Context, entry: Entry) -> Result:
    """The module named by the entry's `config.module` (and its submodules) is imported only
    by the library files under `config.importers` (a path ending in `/` is a directory, any
    other an exact file): `import`, `from ... import`, and import_module/__import__/run_module
    of a string literal, anywhere in a file, `if TYPE_CHECKING:` included (knowing the
    module's types is knowing the module)."""
    module, importers, why = _confinement(entry)
    if why:
        where = SPEC_RELPATH
        return verdict([(f"{where}: {entry['id']} {why}", where)], "", [])
    problems: List[Problem] = parse_errors(ctx.library)
    inside: Set[str] = set()
    allowed = ", ".join(importers)
    for source in ctx.library:
        found: List[Tuple[int, str]] = []
        for node in source.nodes():
            name = next((m for m in imported_modules(node) if is_within(m, module)), None)
            if name is not None:
                found.append((getattr(node, "lineno", 1), name))
        if any(_covers(prefix, source.rel) for prefix in importers):
            if found:
                inside.add(source.rel)
            continue
        for line, name in sorted(found):
            where = f"{source.rel}:{line}"
            problems.append((f"{where} imports `{name}` outside {allowed}", where))
    return verdict(
        problems,
        f"`{module}` is imported only under {allowed} ({len(inside)} modules there import it)",
        [f"{LIBRARY}/"],
    )


def _covers(prefix: str, rel: str) -> bool:
    return rel.startswith(prefix) if prefix.endswith("/") else rel == prefix


def _confinement(entry: Entry) -> Tuple[str, List[str], str]:
    """(module, importers, "") from the entry's `config`, or ("", [], why not)."""
    config: Any = entry.get("config")
    usage = 'needs `config = { module = "<module>", importers = ["<dir>/", "<file>"] }`'
    if not isinstance(config, dict):
        return "", [], usage
    module = config.get("module")
    importers = config.get("importers")
    if not isinstance(module, str) or not module.strip():
        return "", [], f"{usage}: `module` is not a non-empty string"
    if (
        not isinstance(importers, list)
        or not importers
        or not all(isinstance(item, str) and item for item in importers)
    ):
        return "", [], f"{usage}: `importers` is not a non-empty list of paths"
    return module, list(importers), ""
