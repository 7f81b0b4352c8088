"""`ci/forge-lanes.toml`: the forge's lane manifest.

The format is the forge's, unchanged (`version = 1`, `nightly_schedule_utc`, `[[branch.lanes]]`,
`[[nightly.lanes]]`), so an existing manifest loads as it is, with the forge's normalisation of
staged lanes. The manifest is also the single list of a staged target's path filters
(`filters_for_target`)."""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Pattern, Sequence, Tuple

from pikaci.forge.globs import GlobError, compile_glob
from pikaci.ids import ID_RULE, is_safe_id
from pikaci.plan import target_task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

MANIFEST_PATH = "ci/forge-lanes.toml"
MANIFEST_VERSION = 1
STAGED_LAUNCHER = "./scripts/pikaci-staged-linux-remote.sh"
BRANCH = "branch"
NIGHTLY = "nightly"
LANE_KEYS = (
    "id",
    "title",
    "entrypoint",
    "command",
    "paths",
    "concurrency_group",
    "staged_linux_target",
)
TOP_LEVEL_KEYS = ("version", "nightly_schedule_utc", BRANCH, NIGHTLY)
SECTION_KEYS = ("lanes",)
_SCHEDULE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class ForgeManifestError(ValueError):
    """One line naming the manifest file, the lane and the key at fault."""


# -- the manifest -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ForgeLane:
    kind: str  # BRANCH or NIGHTLY
    id: str
    title: str
    entrypoint: str
    command: Tuple[str, ...]
    paths: Tuple[str, ...] = ()
    concurrency_group: Optional[str] = None
    staged_linux_target: Optional[str] = None
    # the paths, compiled once at load
    matchers: Tuple[Tuple[str, Pattern[str]], ...] = field(default=(), compare=False, repr=False)

    @property
    def runs(self) -> str:
        """What the lane runs, for plans: its staged target, or its command line."""
        if self.staged_linux_target is not None:
            return target_task(self.staged_linux_target)
        return shlex.join(self.command)

    def first_match(self, changed: Sequence[str]) -> Optional[Tuple[str, str]]:
        for path in changed:
            for pattern, regex in self.matchers:
                if regex.match(path):
                    return path, pattern
        return None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "entrypoint": self.entrypoint,
            "command": list(self.command),
            "paths": list(self.paths),
            "concurrency_group": self.concurrency_group,
            "staged_linux_target": self.staged_linux_target,
        }


@dataclass(frozen=True)
class ForgeManifest:
    path: str  # as errors and plans name it
    version: int
    nightly_schedule_utc: str
    branch_lanes: Tuple[ForgeLane, ...]
    nightly_lanes: Tuple[ForgeLane, ...]


def staged_command(target: str) -> Tuple[str, ...]:
    """The forge's normalised command of a staged lane."""
    return (STAGED_LAUNCHER, "run", target)


def load_manifest(path: Path, label: Optional[str] = None) -> ForgeManifest:
    """Read and validate a manifest; ForgeManifestError names the file, lane and key."""
    name = label or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ForgeManifestError(f"{name}: no such file") from None
    except OSError as exc:
        raise ForgeManifestError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ForgeManifestError(f"{name}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ForgeManifestError(f"{name}: invalid TOML: nested too deeply") from None
    return parse_manifest(data, name)


def parse_manifest(data: Mapping[str, Any], name: str = MANIFEST_PATH) -> ForgeManifest:
    # a misspelt section or key would otherwise drop lanes without a word
    _refuse_unknown(data, TOP_LEVEL_KEYS, name)
    version = data.get("version")
    if isinstance(version, bool) or version != MANIFEST_VERSION:
        raise ForgeManifestError(f"{name}: key `version` must be 1, got {version!r}")
    schedule = data.get("nightly_schedule_utc")
    if not isinstance(schedule, str) or not _SCHEDULE.match(schedule):
        raise ForgeManifestError(
            f'{name}: key `nightly_schedule_utc` must be "HH:MM" (UTC), got {schedule!r}'
        )
    sections = {kind: _section(data, kind, name) for kind in (BRANCH, NIGHTLY)}
    return ForgeManifest(
        path=name,
        version=MANIFEST_VERSION,
        nightly_schedule_utc=schedule,
        branch_lanes=sections[BRANCH],
        nightly_lanes=sections[NIGHTLY],
    )


def _section(data: Mapping[str, Any], kind: str, name: str) -> Tuple[ForgeLane, ...]:
    table = data.get(kind, {})
    if not isinstance(table, dict):
        raise ForgeManifestError(f"{name}: key `{kind}` must be a table")
    _refuse_unknown(table, SECTION_KEYS, f"{name}: [{kind}]")
    entries = table.get("lanes", [])
    if not isinstance(entries, list):
        raise ForgeManifestError(f"{name}: key `{kind}.lanes` must be an array of tables")
    lanes: List[ForgeLane] = []
    ids: Dict[str, int] = {}
    targets: Dict[str, str] = {}
    for index, entry in enumerate(entries):
        lane = _lane(entry, kind, index, name)
        where = f"{name}: {kind} lane `{lane.id}`"
        if lane.id in ids:
            raise ForgeManifestError(
                f"{where}: duplicate lane id ({kind}.lanes[{ids[lane.id]}] and [{index}])"
            )
        ids[lane.id] = index
        target = lane.staged_linux_target
        if target is not None and target in targets:
            raise ForgeManifestError(
                f"{where}: key `staged_linux_target`: `{target}` is already the target of "
                f"lane `{targets[target]}` (one lane per staged target)"
            )
        if target is not None:
            targets[target] = lane.id
        lanes.append(lane)
    return tuple(lanes)


def _lane(entry: Any, kind: str, index: int, name: str) -> ForgeLane:
    if not isinstance(entry, dict):
        raise ForgeManifestError(f"{name}: {kind}.lanes[{index}]: must be a table")
    lane_id = entry.get("id")
    if not isinstance(lane_id, str) or not lane_id.strip():
        raise ForgeManifestError(
            f"{name}: {kind}.lanes[{index}]: key `id` must be a non-empty string"
        )
    where = f"{name}: {kind} lane `{lane_id}`"
    # a misspelt `paths` would otherwise make the lane run on every change
    _refuse_unknown(entry, LANE_KEYS, where)
    title = _optional_str(entry, "title", where)
    entrypoint = _optional_str(entry, "entrypoint", where)
    group = _optional_str(entry, "concurrency_group", where)
    target = _optional_str(entry, "staged_linux_target", where)
    command = _str_list(entry, "command", where)
    paths = _str_list(entry, "paths", where)
    if target is not None and not is_safe_id(target):
        raise ForgeManifestError(
            f"{where}: key `staged_linux_target` must be a target id ({ID_RULE}), got {target!r}"
        )
    if target is not None:
        # the forge's normalisation: the launcher runs the target, whatever `command` says
        command = staged_command(target)
        entrypoint = entrypoint or " ".join(command)
        group = group or f"staged-linux:{target}"
    elif not command or not all(part.strip() for part in command):
        raise ForgeManifestError(
            f"{where}: needs `staged_linux_target` or a non-empty `command` "
            "(a list of non-empty strings)"
        )
    matchers = []
    for pattern in paths:
        problem = _never_matches(pattern)
        if problem is not None:
            raise ForgeManifestError(f"{where}: key `paths`: {pattern!r} {problem}")
        try:
            matchers.append((pattern, compile_glob(pattern)))
        except GlobError as exc:
            raise ForgeManifestError(f"{where}: key `paths`: {exc}") from None
    return ForgeLane(
        kind=kind,
        id=lane_id,
        title=title or lane_id,
        entrypoint=entrypoint or shlex.join(command),
        command=tuple(command),
        paths=tuple(paths),
        concurrency_group=group,
        staged_linux_target=target,
        matchers=tuple(matchers),
    )


def _never_matches(pattern: str) -> Optional[str]:
    """Why a path filter can never match a changed path (repository-relative, normalised)."""
    if not pattern:
        return "is empty and can never match"
    if pattern.startswith("/"):
        return "is absolute; changed paths are relative to the repository root"
    if ".." in pattern.split("/") or "." in pattern.split("/"):
        return "has a `.` or `..` component; changed paths never do"
    return None


def _refuse_unknown(table: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ForgeManifestError(
            f"{where}: unknown key `{unknown[0]}` (expected one of {', '.join(known)})"
        )


def _optional_str(entry: Mapping[str, Any], key: str, where: str) -> Optional[str]:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ForgeManifestError(f"{where}: key `{key}` must be a string")
    return value or None


def _str_list(entry: Mapping[str, Any], key: str, where: str) -> Tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ForgeManifestError(f"{where}: key `{key}` must be a list of strings")
    return tuple(value)


def filters_for_target(manifest: ForgeManifest, target_id: str) -> Tuple[str, ...]:
    """A staged target's path filters: the paths of the branch lane that runs it."""
    found = [lane for lane in manifest.branch_lanes if lane.staged_linux_target == target_id]
    if not found:
        raise ForgeManifestError(f"missing forge lane manifest entry for `{target_id}`")
    if len(found) > 1:  # pragma: no cover - parse_manifest already refuses this
        ids = ", ".join(f"`{lane.id}`" for lane in found)
        raise ForgeManifestError(f"{manifest.path}: staged target `{target_id}` has lanes {ids}")
    return found[0].paths


def recorded_filters(source_root: Path, target_id: str) -> Tuple[List[str], Optional[str]]:
    """What a run of a staged target records as its path filters: the manifest's (their only
    source), none without a manifest; the problem, when the manifest cannot say."""
    path = source_root / MANIFEST_PATH
    if not path.is_file():
        return [], None
    try:
        return list(filters_for_target(load_manifest(path), target_id)), None
    except ForgeManifestError as exc:
        return [], str(exc)
