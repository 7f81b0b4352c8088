"""Thin typed wrapper around the git CLI: HEAD plus the set of changed paths."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

__all__ = ["GitState", "git_state"]

# Status codes whose -z record is followed by a second record holding the original path.
_TWO_PATH_CODES = frozenset("RC")
_IGNORED = "!!"


@dataclass(frozen=True)
class GitState:
    """What git knows about a source root, relative to that root."""

    head: Optional[str]
    dirty: bool
    changed: Tuple[str, ...]


@dataclass(frozen=True)
class _RepoInfo:
    head: Optional[str]
    prefix: str  # source root relative to the top level, "" or ending in "/"


def git_state(source_root: Path) -> Optional[GitState]:
    """Return HEAD and changed paths, or None without git or outside a work tree."""
    # both calls run at once: this is on the path of every no-op rerun
    status = _spawn_git(
        source_root,
        "status",
        "--porcelain=v1",
        "-z",
        "--ignored=traditional",
        "--untracked-files=normal",
        "--",
        ".",
    )
    info = _repo_info(source_root)
    raw = _finish(status)
    if info is None or raw is None or raw[0] != 0:
        return None
    dirty = False
    changed: List[str] = []
    for code, path in _parse_status(raw[1]):
        rels = _relativize(path, info.prefix, source_root)
        if rels and code != _IGNORED:
            dirty = True
        changed.extend(rels)
    return GitState(head=info.head, dirty=dirty, changed=tuple(sorted(set(changed))))


def _repo_info(source_root: Path) -> Optional[_RepoInfo]:
    # One call answers three questions; exit status 1 only means "no commits yet".
    raw = _run_git(
        source_root,
        "rev-parse",
        "--is-inside-work-tree",
        "--show-prefix",
        "--verify",
        "-q",
        "HEAD",
    )
    if raw is None or raw[0] not in (0, 1):
        return None
    lines = os.fsdecode(raw[1]).split("\n")
    if len(lines) < 2 or lines[0] != "true":
        return None
    head = lines[2] if raw[0] == 0 and len(lines) > 2 and lines[2] else None
    return _RepoInfo(head=head, prefix=lines[1])


def _run_git(cwd: Path, *args: str) -> Optional[Tuple[int, bytes]]:
    """Run git quietly; None when git itself cannot be started."""
    return _finish(_spawn_git(cwd, *args))


class GitError(Exception):
    """git could not be started; the message is one line."""


def git_output(cwd: Path, *args: str) -> Optional[str]:
    """A read-only git command's stdout (stderr is not parsed), None when it failed;
    GitError when git cannot be started at all."""
    proc = _spawn_git(cwd, *args)
    if proc is None:
        raise GitError("cannot run git: is it installed?")
    code, out = _finish(proc) or (1, b"")
    return os.fsdecode(out) if code == 0 else None


def _spawn_git(cwd: Path, *args: str) -> Optional[subprocess.Popen[bytes]]:
    try:
        return subprocess.Popen(
            ["git", "-C", str(cwd), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_git_env(),
        )
    except OSError:
        return None


def _finish(proc: Optional[subprocess.Popen[bytes]]) -> Optional[Tuple[int, bytes]]:
    if proc is None:
        return None
    out, _ = proc.communicate()
    return proc.returncode, out


def _git_env() -> Dict[str, str]:
    env = dict(os.environ)
    # Read-only callers must not take index.lock and race with concurrent git commands.
    env["GIT_OPTIONAL_LOCKS"] = "0"
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return env


def _parse_status(out: bytes) -> Iterator[Tuple[str, str]]:
    """Yield (XY, top-level-relative path) for every path in porcelain v1 -z output."""
    records = out.split(b"\0")
    i = 0
    while i < len(records):
        record = records[i]
        i += 1
        if len(record) < 4:
            continue
        code = record[:2].decode("ascii", "replace")
        yield code, os.fsdecode(record[3:])
        if _TWO_PATH_CODES.intersection(code) and i < len(records):
            yield code, os.fsdecode(records[i])
            i += 1


def _relativize(path: str, prefix: str, source_root: Path) -> List[str]:
    """Map a top-level-relative path to source-root-relative ones (may be none)."""
    if not prefix:
        return [path]
    if path.startswith(prefix) and path != prefix:
        return [path[len(prefix) :]]
    if path.endswith("/") and prefix.startswith(path):
        # The root itself sits inside a collapsed directory: everything in it is listed.
        return _root_children(source_root)
    return []


def _root_children(source_root: Path) -> List[str]:
    try:
        with os.scandir(source_root) as it:
            return [e.name + "/" if e.is_dir(follow_symlinks=False) else e.name for e in it]
    except OSError:
        return []
