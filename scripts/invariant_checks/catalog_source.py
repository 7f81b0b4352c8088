"""`dodo.py` read statically: the declaration calls and the constants they use."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .results import Problem
from .sources import CATALOG_RELPATH, LIBRARY, Source, call_name, unparse

Value = Union[str, int, bool, ast.Call, None]


class CatalogSource:
    """The parts of `dodo.py` the checks need: Target, Lane and StagedPayloads calls, and the
    module-level names they use (string and integer constants, `Execution(...)` calls, names
    imported from `pikaci.catalog`, whose own constants are read the same way).

    Not `pikaci.catalog.Catalog`: that is the declaration object; this is its source text."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = Source(root, root / CATALOG_RELPATH)
        self.bindings: Dict[str, ast.AST] = {}
        self.imported: Dict[str, str] = {}
        self.library_constants: Dict[str, ast.AST] = {}
        tree = self.source.tree
        if tree is not None:
            self.bindings, self.imported = module_bindings(tree)
        catalog_module = root / LIBRARY / "catalog.py"
        if catalog_module.is_file():
            library = Source(root, catalog_module)
            if library.tree is not None:
                self.library_constants, _ = module_bindings(library.tree)

    def calls(self, name: str) -> List[ast.Call]:
        found = [node for node in self.source.nodes() if call_name(node) == name]
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
        return None, f"`{unparse(node)}` cannot be resolved statically"

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


def module_bindings(tree: ast.Module) -> Tuple[Dict[str, ast.AST], Dict[str, str]]:
    """Module-level `name = value` bindings, and the names imported from pikaci.catalog
    (local name -> original name)."""
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
