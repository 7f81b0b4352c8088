"""The change set a branch plan selects from: paths changed between the merge base of a base
ref and HEAD, optionally with the work tree's changes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pikaci.git import GitError, git_output


class ChangeSetError(ValueError):
    """Git could not say what changed (unknown base, not a repository)."""


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
    try:
        return git_output(root, *args)
    except GitError as exc:
        raise ChangeSetError(str(exc)) from None


def _names(root: Path, *args: str) -> List[str]:
    out = _git(root, *args)
    if out is None:
        raise ChangeSetError(f"`git {' '.join(args[:2])}` failed in {root}")
    return [name for name in out.split("\0") if name]
