"""PIKACI-005: the catalog's staged targets and the forge manifest's branch lanes match."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Tuple

from .context import Context, Entry, check
from .results import Problem, Result, verdict
from .sources import CATALOG_RELPATH, MANIFEST_RELPATH
from .spec import SpecError, load_toml


@check("PIKACI-005")
def staged_targets_match_manifest(ctx: Context, entry: Entry) -> Result:
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
        manifest_problems, lanes = _manifest_staged_targets(manifest_path)
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


def _manifest_staged_targets(path: Path) -> Tuple[List[Problem], Dict[str, List[str]]]:
    try:
        manifest = load_toml(path)
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
