"""What every check receives (the repository, parsed once) and the table of checks by id."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .catalog_source import CatalogSource
from .results import Problem, Result
from .sources import CATALOG_RELPATH, Source, library_sources


class Context:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._catalog: Optional[CatalogSource] = None
        self._library: Optional[List[Source]] = None

    @property
    def catalog(self) -> CatalogSource:
        if self._catalog is None:
            self._catalog = CatalogSource(self.root)
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


Entry = Dict[str, Any]  # one [[invariant]] table of the spec
Check = Callable[[Context, Entry], Result]
CHECKS: Dict[str, Check] = {}


def check(invariant_id: str) -> Callable[[Check], Check]:
    """Register the decorated function as the deterministic check of `invariant_id`."""

    def register(function: Check) -> Check:
        CHECKS[invariant_id] = function
        return function

    return register
