"""`ci/forge-lanes.toml`: the forge's lane manifest, and path-filtered lane selection.

The manifest format is the forge's, unchanged (`version = 1`, `nightly_schedule_utc`,
`[[branch.lanes]]`, `[[nightly.lanes]]`), so an existing manifest loads as it is, with the
forge's normalisation of staged lanes. Branch-lane selection follows the forge: changed paths
between the merge base of a base ref and HEAD; a change to the manifest itself or an empty
change set selects every branch lane; a lane without paths is always selected; otherwise a lane
runs when a changed path matches one of its globs (Rust `globset` defaults: whole-path match,
`*` and `?` may cross `/`, `**`, `[...]`, `{a,b}`, case-sensitive).

The manifest is also the single list of a staged target's path filters (`filters_for_target`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Pattern, Sequence, Tuple

from pikaci.ids import ID_RULE, is_safe_id

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
_SCHEDULE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class ForgeManifestError(ValueError):
    """One line naming the manifest file, the lane and the key at fault."""


class GlobError(ValueError):
    """An invalid glob, in globset's words."""


class ChangeSetError(ValueError):
    """Git could not say what changed (unknown base, not a repository)."""


# -- globs ------------------------------------------------------------------------------------


def compile_glob(pattern: str) -> Pattern[str]:
    """The glob as one anchored regex, with globset's default options.

    `*` and `?` cross `/` (literal_separator off); `**/` at the start matches any (or no)
    leading directories, `/**` at the end anything below, `/**/` zero or more directories, and
    `**` elsewhere is two `*`. `[...]`/`[!...]`/`[^...]` are classes, `{a,b}` alternatives (may
    nest), `\\` escapes the next character. Matching is case-sensitive.
    """
    body, end = _translate(pattern, 0, 0)
    if end != len(pattern):  # pragma: no cover - _translate consumes everything at depth 0
        raise GlobError(f"invalid glob {pattern!r}")
    return re.compile(f"(?s:{body})\\Z")


def _translate(pattern: str, i: int, depth: int) -> Tuple[str, int]:
    """Translate from `i` up to the `}` or `,` closing this depth (or the end at depth 0)."""
    out: List[str] = []
    n = len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise GlobError(f"invalid glob {pattern!r}: dangling '\\'")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif char == "*":
            i = _star(pattern, i, out)
        elif char == "?":
            out.append(".")
            i += 1
        elif char == "[":
            text, i = _class(pattern, i)
            out.append(text)
        elif char == "{":
            alternatives: List[str] = []
            i += 1
            while True:
                text, i = _translate(pattern, i, depth + 1)
                alternatives.append(text)
                if i >= n:
                    raise GlobError(f"invalid glob {pattern!r}: unclosed alternate group")
                i += 1
                if pattern[i - 1] == "}":
                    break
            out.append("(?:" + "|".join(alternatives) + ")")
        elif char == "}" and depth > 0:
            return "".join(out), i
        elif char == "}":
            raise GlobError(f"invalid glob {pattern!r}: unopened alternate group")
        elif char == "," and depth > 0:
            return "".join(out), i
        else:
            out.append(re.escape(char))
            i += 1
    if depth > 0:
        raise GlobError(f"invalid glob {pattern!r}: unclosed alternate group")
    return "".join(out), i


def _star(pattern: str, i: int, out: List[str]) -> int:
    """`*` or one of the `**` forms starting at `i`; the index after it."""
    if pattern[i + 1 : i + 2] != "*":
        out.append(".*")
        return i + 1
    after = pattern[i + 2 : i + 3]
    at_start = i == 0
    after_slash = i > 0 and pattern[i - 1] == "/"
    if (at_start or after_slash) and after == "/":
        out.append("(?:.*/)?")  # any number of directories, none included
        return i + 3
    # `**` alone, `/**` at the end, and `**` anywhere else all come down to "anything"
    out.append(".*")
    return i + 2


def _class(pattern: str, i: int) -> Tuple[str, int]:
    start = i
    i += 1
    negated = i < len(pattern) and pattern[i] in "!^"
    if negated:
        i += 1
    items: List[str] = []
    first = True
    while i < len(pattern) and (first or pattern[i] != "]"):
        low = pattern[i]
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            high = pattern[i + 2]
            if low > high:
                raise GlobError(f"invalid glob {pattern!r}: invalid range; {low!r} > {high!r}")
            items.append(f"{_class_char(low)}-{_class_char(high)}")
            i += 3
        else:
            items.append(_class_char(low))
            i += 1
        first = False
    if i >= len(pattern):
        raise GlobError(
            f"invalid glob {pattern!r}: unclosed character class at {start}; missing ']'"
        )
    return ("[^" if negated else "[") + "".join(items) + "]", i + 1


def _class_char(char: str) -> str:
    return "\\" + char if char in "\\]^-[" else char


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
            return f"target:{self.staged_linux_target}"
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
    return parse_manifest(data, name)


def parse_manifest(data: Mapping[str, Any], name: str = MANIFEST_PATH) -> ForgeManifest:
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
    unknown = sorted(set(entry) - set(LANE_KEYS))
    if unknown:
        # a misspelt `paths` would otherwise make the lane run on every change
        raise ForgeManifestError(
            f"{where}: unknown key `{unknown[0]}` (expected one of {', '.join(LANE_KEYS)})"
        )
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


# -- changed paths ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeSet:
    paths: Tuple[str, ...]
    # False: nothing to compare with (no base, clean or ignored working tree); every branch
    # lane runs rather than none
    known: bool = True
    base: Optional[str] = None
    merge_base: Optional[str] = None
    worktree: bool = False
    source: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {
            "known": self.known,
            "base": self.base,
            "merge_base": self.merge_base,
            "worktree": self.worktree,
            "source": self.source,
            "paths": list(self.paths),
        }


def changed_paths(root: Path, base: Optional[str], include_worktree: bool = False) -> ChangeSet:
    """Paths (relative to the repository top) changed since the merge base of `base` and HEAD,
    plus, with `include_worktree`, uncommitted and untracked ones.

    Without a base, only the working tree can say what changed; when that is not asked for or
    is clean, the set is `known=False` and selection runs every branch lane.
    """
    paths: List[str] = []
    sources: List[str] = []
    merge_base: Optional[str] = None
    if base:
        head = _git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
        if head is None:
            raise ChangeSetError(f"{root}: no commit at HEAD")
        if _git(root, "rev-parse", "--verify", "-q", f"{base}^{{commit}}") is None:
            raise ChangeSetError(f"base `{base}` does not name a commit")
        found = _git(root, "merge-base", base, "HEAD")
        merge_base = found.strip() if found else None
        if merge_base:
            # --no-renames: a rename also counts as a change under its old path
            paths += _names(root, "diff", "--name-only", "--no-renames", "-z", merge_base, "HEAD")
            sources.append(f"git diff {merge_base[:12]}..HEAD (merge base with {base})")
        else:
            paths += _names(root, "ls-tree", "-r", "--name-only", "-z", "HEAD")
            sources.append(f"every file at HEAD (no merge base with {base})")
    if include_worktree:
        paths += _names(root, "diff", "--name-only", "--no-renames", "-z", "HEAD")
        paths += _names(root, "ls-files", "--others", "--exclude-standard", "--full-name", "-z")
        sources.append("working tree")
    unique = tuple(sorted(set(paths)))
    known = bool(base) or bool(unique)
    return ChangeSet(
        paths=unique,
        known=known,
        base=base or None,
        merge_base=merge_base,
        worktree=include_worktree,
        source=" + ".join(sources) if known else "none (no base, clean working tree)",
    )


def _git(root: Path, *args: str) -> Optional[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    env["GIT_OPTIONAL_LOCKS"] = "0"  # read-only: never take index.lock
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            check=False,
        )
    except OSError as exc:
        raise ChangeSetError(f"cannot run git: {exc}") from None
    if proc.returncode != 0:
        return None
    return os.fsdecode(proc.stdout)


def _names(root: Path, *args: str) -> List[str]:
    out = _git(root, *args)
    if out is None:
        raise ChangeSetError(f"`git {' '.join(args[:2])}` failed in {root}")
    return [name for name in out.split("\0") if name]


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
