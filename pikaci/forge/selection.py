"""Path-filtered lane selection over the manifest, following the forge.

A change to the manifest itself or an empty change set selects every branch lane; a lane without
paths is always selected; otherwise a lane runs when a changed path matches one of its globs.
Each selection carries its reason (the first matching path and pattern)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import orjson

from pikaci.forge.changes import ChangeSet, changed_paths
from pikaci.forge.manifest import (
    MANIFEST_PATH,
    NIGHTLY,
    ForgeLane,
    ForgeManifest,
    ForgeManifestError,
    load_manifest,
)
from pikaci.options import Option

# -- selection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    lane: ForgeLane
    selected: bool
    reason: str
    matched_path: Optional[str] = None
    matched_pattern: Optional[str] = None

    def line(self) -> str:
        verdict = "SELECTED" if self.selected else "SKIPPED"
        return f"{verdict} {self.lane.id} ({self.lane.runs}): {self.reason}"

    def to_dict(self) -> Dict[str, Any]:
        return {
            **self.lane.to_dict(),
            "kind": self.lane.kind,
            "selected": self.selected,
            "reason": self.reason,
            "matched_path": self.matched_path,
            "matched_pattern": self.matched_pattern,
        }


def select_branch(manifest: ForgeManifest, changes: ChangeSet) -> List[Selection]:
    lanes = manifest.branch_lanes
    if not changes.known:
        reason = "no change information (no base, clean working tree): every branch lane"
        return [Selection(lane, True, reason) for lane in lanes]
    if MANIFEST_PATH in changes.paths:
        return [
            Selection(lane, True, f"{MANIFEST_PATH} changed: every branch lane") for lane in lanes
        ]
    if not changes.paths:
        return [Selection(lane, True, "no changed paths: every branch lane") for lane in lanes]
    selections = []
    for lane in lanes:
        if not lane.paths:
            selections.append(Selection(lane, True, "no paths: always"))
            continue
        match = lane.first_match(changes.paths)
        if match is None:
            patterns = ", ".join(lane.paths)
            selections.append(
                Selection(lane, False, f"no changed path matches (patterns: {patterns})")
            )
        else:
            path, pattern = match
            selections.append(Selection(lane, True, f"{path} matches {pattern}", path, pattern))
    return selections


def select_nightly(manifest: ForgeManifest) -> List[Selection]:
    return [Selection(lane, True, "nightly lane: always") for lane in manifest.nightly_lanes]


def plan_dict(
    manifest: ForgeManifest,
    kind: str,
    changes: Optional[ChangeSet],
    selections: Sequence[Selection],
) -> Dict[str, Any]:
    return {
        "manifest": manifest.path,
        "kind": kind,
        "nightly_schedule_utc": manifest.nightly_schedule_utc,
        "changes": changes.to_dict() if changes is not None else None,
        "lanes": [selection.to_dict() for selection in selections],
    }


BASE = Option(
    "base",
    "base",
    str,
    "",
    "compare HEAD with its merge base with this ref (empty: no base; a clean tree then "
    "selects every branch lane)",
    metavar="REF",
)
WORKTREE = Option(
    "worktree", "worktree", bool, False, "also count uncommitted and untracked changes"
)
NIGHTLY_SWITCH = Option("nightly", "nightly", bool, False, "the nightly lanes instead")


@dataclass(frozen=True)
class ForgePlan:
    """Which lanes of the manifest run, and why."""

    kind: str  # branch | nightly
    manifest: ForgeManifest
    changes: Optional[ChangeSet]  # None for nightly
    selections: List[Selection]

    @property
    def selected(self) -> List[ForgeLane]:
        return [selection.lane for selection in self.selections if selection.selected]

    def render(self, as_json: bool) -> str:
        if as_json:
            data = plan_dict(self.manifest, self.kind, self.changes, self.selections)
            return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
        return "".join(selection.line() + "\n" for selection in self.selections)


def compute_plan(source_root: Path, kind: str, base: Optional[str], worktree: bool) -> ForgePlan:
    """Manifest, change set and selections; raises ForgeManifestError or ChangeSetError."""
    manifest = load_manifest(source_root / MANIFEST_PATH, MANIFEST_PATH)
    declared = manifest.nightly_lanes if kind == NIGHTLY else manifest.branch_lanes
    if not declared:
        # an empty plan would pass CI with nothing run
        raise ForgeManifestError(
            f"{manifest.path}: declares no {kind} lanes (`[[{kind}.lanes]]`): nothing would run"
        )
    if kind == NIGHTLY:
        return ForgePlan(kind, manifest, None, select_nightly(manifest))
    changes = changed_paths(source_root, base or None, worktree)
    return ForgePlan(kind, manifest, changes, select_branch(manifest, changes))
