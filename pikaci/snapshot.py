"""Workspace snapshots: copy filter, content-addressed store, cheap source fingerprint."""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import hashlib
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
)

import orjson

from pikaci.retention import SNAPSHOT_TEMP_PREFIX, remove_abandoned_temps
from pikaci.store import write_json
from pikaci.timestamps import now_timestamp

if TYPE_CHECKING:
    from hashlib import _Hash

    from pikaci.git import GitState

__all__ = [
    "FILTER_VERSION",
    "SCHEMA_VERSION",
    "SNAPSHOT_METADATA_FILE",
    "SnapshotError",
    "SnapshotFilter",
    "SnapshotMetadata",
    "content_hash",
    "create_snapshot",
    "read_metadata",
    "source_fingerprint",
]

SNAPSHOT_METADATA_FILE = "pikaci-snapshot.json"
FILTER_VERSION = 1
SCHEMA_VERSION = 1

# Skipped at every depth.
_ALWAYS_SKIPPED = frozenset({".git", ".pikaci", ".direnv", "target"})
# Skipped below the root only: a top-level "build" is usually real source.
_NESTED_SKIPPED = frozenset({"node_modules", ".gradle", "DerivedData", "build"})

_CHUNK = 1 << 20
_PUBLISH_ATTEMPTS = 3


class SnapshotError(Exception):
    """A snapshot could not be made or read; the message names the path."""


@dataclass(frozen=True)
class SnapshotFilter:
    """Which workspace entries a snapshot leaves out, on top of the fixed skip lists."""

    extra_excludes: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.extra_excludes, str):
            raise TypeError("extra_excludes must be a sequence of patterns, not a string")
        excludes = tuple(self.extra_excludes)
        for pattern in excludes:
            _validate_pattern(pattern)
        # Accept any sequence but keep the frozen instance hashable.
        object.__setattr__(self, "extra_excludes", excludes)

    def skips(self, relpath: str, name: str, depth: int) -> bool:
        """True when the entry (depth 0 = directly in the root) stays out of the snapshot."""
        if name in _ALWAYS_SKIPPED or (depth > 0 and name in _NESTED_SKIPPED):
            return True
        for pattern in self.extra_excludes:
            if pattern.startswith("/"):
                if fnmatch.fnmatchcase(relpath, pattern[1:]):
                    return True
            elif fnmatch.fnmatchcase(name, pattern):
                return True
        return False

    def key(self) -> str:
        """Stable identity of the filter's behaviour, for fingerprints and metadata."""
        patterns = orjson.dumps(sorted(set(self.extra_excludes))).decode()
        return f"v{FILTER_VERSION}:{patterns}"


def _validate_pattern(pattern: object) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"snapshot exclude pattern must be a non-empty string: {pattern!r}")
    if "\0" in pattern:
        raise ValueError(f"snapshot exclude pattern contains NUL: {pattern!r}")
    if "/" in pattern and not pattern.startswith("/"):
        raise ValueError(
            f"snapshot exclude pattern {pattern!r} has '/' but is not root-anchored;"
            f" write '/{pattern}' or use a bare name pattern"
        )
    parts = pattern[1:].split("/") if pattern.startswith("/") else [pattern]
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(
            f"snapshot exclude pattern {pattern!r} has an empty, '.' or '..' component"
        )


@dataclass(frozen=True)
class SnapshotMetadata:
    """Contents of pikaci-snapshot.json."""

    source_root: str
    snapshot_dir: str
    git_head: Optional[str]
    git_dirty: bool
    created_at: str
    content_hash: str
    filter: Optional[str] = None
    schema_version: int = SCHEMA_VERSION
    # content hash + which files are executable: the content hash (the upstream contract)
    # ignores modes, but a lane sees them; the snapshot's directory is named after this
    tree_id: Optional[str] = None

    @property
    def identity(self) -> str:
        return self.tree_id or self.content_hash

    def to_dict(self) -> Dict[str, Any]:
        # Explicit order: the file layout is part of the contract.
        return {
            "source_root": self.source_root,
            "snapshot_dir": self.snapshot_dir,
            "git_head": self.git_head,
            "git_dirty": self.git_dirty,
            "created_at": self.created_at,
            "content_hash": self.content_hash,
            "filter": self.filter,
            "schema_version": self.schema_version,
            "tree_id": self.tree_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SnapshotMetadata:
        digest = data.get("content_hash")
        if not isinstance(digest, str) or not digest:
            raise ValueError("snapshot metadata lacks a content_hash string")
        return cls(
            source_root=_field(data, "source_root", str, ""),
            snapshot_dir=_field(data, "snapshot_dir", str, ""),
            git_head=_optional_str(data, "git_head"),
            git_dirty=_field(data, "git_dirty", bool, False),
            created_at=_field(data, "created_at", str, ""),
            content_hash=digest,
            filter=_optional_str(data, "filter"),
            schema_version=_field(data, "schema_version", int, SCHEMA_VERSION),
            tree_id=_optional_str(data, "tree_id"),
        )


def _field(data: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    value = data.get(name)
    if value is None:
        return default
    # bool is an int subclass; a bare isinstance check would accept True as a version.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"snapshot metadata field {name!r} is not a {kind.__name__}")
    return value


def _optional_str(data: Mapping[str, Any], name: str) -> Optional[str]:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"snapshot metadata field {name!r} is not a string or null")
    return value


# --- tree walking -------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    path: Path  # for I/O
    rel: str  # POSIX, relative to the walked root
    st: os.stat_result


def _walk(root: Path, filt: Optional[SnapshotFilter], rel_base: str = "") -> Iterator[_Entry]:
    """Pre-order walk in sorted name order without following symlinks.

    rel_base lets the fingerprint walk a subdirectory while the filter still sees
    root-relative paths and depths. The root-level metadata file is never part of a tree.
    """
    base_depth = rel_base.count("/") + 1 if rel_base else 0
    stack: List[Tuple[Path, str, int]] = list(reversed(_children(root, rel_base, base_depth)))
    while stack:
        path, rel, depth = stack.pop()
        name = rel.rsplit("/", 1)[-1]
        if depth == 0 and name == SNAPSHOT_METADATA_FILE:
            continue
        if filt is not None and filt.skips(rel, name, depth):
            continue
        st = _lstat(path)
        yield _Entry(path=path, rel=rel, st=st)
        if stat.S_ISDIR(st.st_mode):
            stack.extend(reversed(_children(path, rel, depth + 1)))


def _children(dir_path: Path, rel: str, depth: int) -> List[Tuple[Path, str, int]]:
    try:
        names = sorted(child.name for child in dir_path.iterdir())
    except OSError as exc:
        raise SnapshotError(f"cannot list {dir_path}: {exc.strerror}") from exc
    prefix = rel + "/" if rel else ""
    return [(dir_path / n, prefix + n, depth) for n in names]


def _lstat(path: Path) -> os.stat_result:
    try:
        return path.lstat()
    except OSError as exc:
        raise SnapshotError(f"cannot stat {path}: {exc.strerror}") from exc


def _special_file_error(path: Path) -> SnapshotError:
    return SnapshotError(f"cannot snapshot special file (fifo, socket or device): {path}")


# --- content hash -------------------------------------------------------------------


def content_hash(snapshot_dir: Path) -> str:
    """SHA-256 of a snapshot tree, ignoring its metadata file."""
    digest = hashlib.sha256()
    for entry in _walk(snapshot_dir, None):
        _hash_entry(digest, entry, None)
    return digest.hexdigest()


def _hash_entry(
    digest: _Hash, entry: _Entry, dest: Optional[Path], modes: Optional[_Hash] = None
) -> None:
    """Feed one entry into the content hash, copying it to dest on the way if given.

    `modes`, when given, gets every executable file's path (what the content hash omits).
    """
    rel = os.fsencode(entry.rel)
    mode = entry.st.st_mode
    if stat.S_ISLNK(mode):
        target = _readlink(entry.path)
        if dest is not None:
            dest.symlink_to(target)
        digest.update(b"symlink\0" + rel + b"\0" + os.fsencode(target) + b"\0")
    elif stat.S_ISDIR(mode):
        if dest is not None:
            dest.mkdir()
        digest.update(b"dir\0" + rel + b"\0")
    elif stat.S_ISREG(mode):
        if modes is not None and mode & 0o111:
            modes.update(b"exec\0" + rel + b"\0")
        digest.update(b"file\0" + rel + b"\0")
        _stream_file(entry.path, digest, dest)
        if dest is not None:
            # Dropping setuid/setgid/sticky: a snapshot has no use for them.
            dest.chmod(stat.S_IMODE(mode) & 0o777)
        digest.update(b"\0")
    else:
        raise _special_file_error(entry.path)


def _readlink(path: Path) -> str:
    try:
        # Path.readlink() normalises ("./x" -> "x"); the target must stay verbatim.
        return os.readlink(path)  # noqa: PTH115
    except OSError as exc:
        raise SnapshotError(f"cannot read symlink {path}: {exc.strerror}") from exc


def _stream_file(path: Path, digest: _Hash, dest: Optional[Path]) -> None:
    try:
        with open(path, "rb") as src:
            if dest is None:
                _pump(src.read, digest, None)
                return
            with open(dest, "xb") as out:
                _pump(src.read, digest, out.write)
    except OSError as exc:
        raise SnapshotError(f"cannot copy {path}: {exc.strerror or exc}") from exc


def _pump(
    read: Callable[[int], bytes], digest: _Hash, write: Optional[Callable[[bytes], object]]
) -> None:
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            return
        digest.update(chunk)
        if write is not None:
            write(chunk)


# --- metadata -----------------------------------------------------------------------


def read_metadata(snapshot_dir: Path) -> Optional[SnapshotMetadata]:
    """Metadata of a snapshot; None when it has none, SnapshotError when unreadable."""
    path = snapshot_dir / SNAPSHOT_METADATA_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return SnapshotMetadata.from_dict(data)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        raise SnapshotError(f"corrupt snapshot metadata {path}: {exc}") from exc


def _write_metadata(snapshot_dir: Path, meta: SnapshotMetadata) -> None:
    write_json(snapshot_dir / SNAPSHOT_METADATA_FILE, meta.to_dict())


# --- create -------------------------------------------------------------------------


def create_snapshot(
    source_root: Path,
    store_dir: Path,
    filt: SnapshotFilter,
    git: Optional[GitState] = None,
) -> SnapshotMetadata:
    """Copy the filtered source tree into store_dir/<content_hash>/ and return its metadata.

    Safe to run concurrently for the same tree: each process builds a private temp
    directory and publishes it with one rename; losers of the race reuse the winner's.
    """
    source = source_root.resolve()
    if not source.is_dir():
        raise SnapshotError(f"snapshot source is not a directory: {source}")
    store = store_dir.resolve()
    _check_store_not_copied(source, store, filt)
    tmp = store / f"{SNAPSHOT_TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    try:
        store.mkdir(parents=True, exist_ok=True)
        remove_abandoned_temps(store, SNAPSHOT_TEMP_PREFIX)
        tmp.mkdir()
        # held while the copy is made: a sweeper never takes a directory still being filled
        held = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(held, fcntl.LOCK_EX)
    except OSError as exc:
        raise SnapshotError(f"cannot create snapshot directory {tmp}: {exc.strerror}") from exc
    try:
        return _fill_and_publish(source, store, tmp, filt, git)
    finally:
        os.close(held)


def _fill_and_publish(
    source: Path, store: Path, tmp: Path, filt: SnapshotFilter, git: Optional[GitState]
) -> SnapshotMetadata:
    try:
        digest, tree_id = _copy_tree(source, tmp, filt)
        final = store / tree_id
        meta = SnapshotMetadata(
            source_root=str(source),
            snapshot_dir=str(final),
            git_head=git.head if git is not None else None,
            git_dirty=git.dirty if git is not None else False,
            created_at=now_timestamp(),
            content_hash=digest,
            filter=filt.key(),
            tree_id=tree_id,
        )
        _write_metadata(tmp, meta)
        return _publish(tmp, final, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_tree(source: Path, dest: Path, filt: SnapshotFilter) -> Tuple[str, str]:
    """Copy and hash in one pass so no byte is read twice: (content hash, tree id)."""
    digest = hashlib.sha256()
    modes = hashlib.sha256()
    for entry in _walk(source, filt):
        target = dest.joinpath(*entry.rel.split("/"))
        try:
            _hash_entry(digest, entry, target, modes)
        except OSError as exc:
            raise SnapshotError(f"cannot copy {entry.path}: {exc.strerror or exc}") from exc
    content = digest.hexdigest()
    return content, f"{content}-{modes.hexdigest()[:16]}"


def _publish(tmp: Path, final: Path, meta: SnapshotMetadata) -> SnapshotMetadata:
    for _ in range(_PUBLISH_ATTEMPTS):
        try:
            tmp.rename(final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise SnapshotError(f"cannot publish snapshot {final}: {exc.strerror}") from exc
        else:
            return meta
        # Same content already published (earlier run or a concurrent process). Its
        # metadata was written before its rename, so a missing file means it was pruned.
        existing = read_metadata(final)
        if existing is not None and existing.identity == meta.identity:
            shutil.rmtree(tmp, ignore_errors=True)
            return existing
        if existing is not None or final.exists():
            raise SnapshotError(f"snapshot directory has missing or foreign metadata: {final}")
    raise SnapshotError(f"cannot publish snapshot {final}: it was removed while publishing")


def _check_store_not_copied(source: Path, store: Path, filt: SnapshotFilter) -> None:
    """A store inside the copied tree would copy its own temp directory forever."""
    try:
        rel = store.relative_to(source)
    except ValueError:
        return
    if not rel.parts or not _path_skipped(rel.as_posix(), filt):
        raise SnapshotError(f"snapshot store {store} is inside the copied source tree {source}")


# --- fingerprint --------------------------------------------------------------------


def source_fingerprint(
    source_root: Path, filt: SnapshotFilter, git: Optional[GitState]
) -> Optional[str]:
    """Cheap identity of the filtered source tree, or None without git information.

    HEAD covers every tracked, unchanged file; only the paths git reports as changed,
    untracked or ignored are read from disk.
    """
    if git is None:
        return None
    digest = hashlib.sha256()
    digest.update(b"fingerprint-v1\0" + filt.key().encode() + b"\0")
    digest.update(b"git-head\0" + (git.head or "").encode() + b"\0")
    for rel in _fingerprint_paths(git.changed, filt):
        digest.update(b"path\0" + os.fsencode(rel) + b"\0")
        _describe(digest, source_root, rel, filt)
    return digest.hexdigest()


def _fingerprint_paths(changed: Tuple[str, ...], filt: SnapshotFilter) -> List[str]:
    """Changed paths the copy keeps, without those already covered by a listed ancestor."""
    kept = {p.rstrip("/") for p in changed if p.rstrip("/") and not _path_skipped(p, filt)}
    return sorted(p for p in kept if not _has_listed_ancestor(p, kept))


def _path_skipped(path: str, filt: SnapshotFilter) -> bool:
    parts = path.rstrip("/").split("/")
    if parts == [SNAPSHOT_METADATA_FILE]:
        return True
    return any(
        filt.skips("/".join(parts[: depth + 1]), name, depth) for depth, name in enumerate(parts)
    )


def _has_listed_ancestor(path: str, listed: AbstractSet[str]) -> bool:
    parts = path.split("/")
    return any("/".join(parts[:i]) in listed for i in range(1, len(parts)))


def _describe(digest: _Hash, root: Path, rel: str, filt: SnapshotFilter) -> None:
    """Tag the current on-disk state of one changed path (recursively for directories)."""
    path = root.joinpath(*rel.split("/"))
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        digest.update(b"missing\0")
        return
    except OSError as exc:
        raise SnapshotError(f"cannot stat {path}: {exc.strerror}") from exc
    _describe_entry(digest, _Entry(path=path, rel=rel, st=st))
    if stat.S_ISDIR(st.st_mode):
        for entry in _walk(path, filt, rel_base=rel):
            digest.update(b"path\0" + os.fsencode(entry.rel) + b"\0")
            _describe_entry(digest, entry)


def _describe_entry(digest: _Hash, entry: _Entry) -> None:
    mode = entry.st.st_mode
    if stat.S_ISLNK(mode):
        target = os.fsencode(_readlink(entry.path))
        digest.update(b"symlink\0" + target + b"\0")
    elif stat.S_ISDIR(mode):
        digest.update(b"dir\0")
    elif stat.S_ISREG(mode):
        file_digest = hashlib.sha256()
        _stream_file(entry.path, file_digest, None)
        executable = b"1" if mode & 0o111 else b"0"
        digest.update(b"file\0" + file_digest.hexdigest().encode() + b"\0" + executable + b"\0")
    else:
        raise _special_file_error(entry.path)
