"""Reading the files of a state root so that nothing below the root can redirect a read.

A lane, or anyone who can write into a run bundle, can put a symbolic link, a FIFO or a device
where a log or record is expected, and can swap one in at any moment. So a read never checks a
path and then opens it: it opens the root once and then each component below it relative to the
directory already opened, with `O_NOFOLLOW`, and the last one must be a regular file (checked on
the opened descriptor, opened without blocking). A link anywhere below the root, whenever it
appears, fails the open instead of leading elsewhere.

Records name files by absolute path. A path that is not below the current root but has the
layout's `runs/<run_id>/...` in it is taken relative to the current root, so a state root that
was moved or restored from a backup keeps its logs.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Union

from pikaci.model import loads_object

PathLike = Union[str, Path]
_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = _FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE = _FLAGS | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


class RefusedFile(OSError):
    """A path that is not a regular file reached without links below the root."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(errno.EPERM, reason, str(path))


def parts_below(root: PathLike, path: PathLike) -> Optional[List[str]]:
    """`path`'s components below `root` (lexically, as given or with the root resolved), or,
    for a path from another root, those from its `runs/` on; None when it has neither."""
    full = Path(os.path.normpath(Path(root) / path))  # `..` folded lexically
    for base in {Path(os.path.normpath(Path(root).absolute())), Path(root).resolve()}:
        try:
            parts = full.relative_to(base).parts
        except ValueError:
            continue
        return list(parts) if parts and ".." not in parts else None
    parts = full.parts
    if "runs" in parts:
        # a moved or restored root: the layout below `runs/` is the same wherever it lives
        tail = parts[len(parts) - 1 - parts[::-1].index("runs") :]
        return list(tail) if len(tail) > 1 and ".." not in tail else None
    return None


def rebased(root: PathLike, path: PathLike) -> Path:
    """Where `path` (from a record, maybe of a root that has moved since) is below `root` now;
    `path` itself when it is not below any `runs/`."""
    parts = parts_below(root, path)
    return Path(root, *parts) if parts else Path(path)


def is_regular_below(root: PathLike, path: PathLike) -> bool:
    """`open_below` would open it: a regular file below `root`, reached without links."""
    try:
        open_below(root, path).close()
    except OSError:
        return False
    return True


def open_below(root: PathLike, path: PathLike) -> BinaryIO:
    """A regular file below `root`, opened without following links.

    FileNotFoundError when it is not there; RefusedFile (an OSError naming the path) when it
    is outside the root, a link, or not a regular file.
    """
    if "\0" in str(path):
        raise RefusedFile(str(path).replace("\0", "\\0"), "a NUL byte in the path")
    parts = parts_below(root, path)
    if not parts or any(part in ("", ".") for part in parts):
        raise RefusedFile(path, "outside the state root")
    directory = os.open(os.path.realpath(root), _FLAGS | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            child = _open_at(directory, part, _DIRECTORY, path)
            os.close(directory)
            directory = child
        fd = _open_at(directory, parts[-1], _FILE, path)
    finally:
        os.close(directory)
    return _regular(fd, path)


def _regular(fd: int, path: PathLike) -> BinaryIO:
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RefusedFile(path, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_below(root: PathLike, path: PathLike, limit: int = 64 << 20) -> bytes:
    """The whole file, refused past `limit` bytes (records are small; a huge one is planted)."""
    with open_below(root, path) as handle:
        if os.fstat(handle.fileno()).st_size > limit:
            raise RefusedFile(path, f"larger than {limit} bytes")
        return handle.read(limit + 1)[:limit]


def read_regular(path: PathLike, limit: int = 64 << 20) -> bytes:
    """A regular file anywhere, its last component not followed if it is a link (for a path a
    record names outside the state root, read by the operator's own CLI)."""
    if "\0" in str(path):
        raise RefusedFile(str(path).replace("\0", "\\0"), "a NUL byte in the path")
    directory = os.open(Path(path).parent, _FLAGS | os.O_DIRECTORY)
    try:
        fd = _open_at(directory, Path(path).name, _FILE, path)
    finally:
        os.close(directory)
    with _regular(fd, path) as handle:
        if os.fstat(handle.fileno()).st_size > limit:
            raise RefusedFile(path, f"larger than {limit} bytes")
        return handle.read(limit + 1)[:limit]


def read_json_below(root: PathLike, path: PathLike) -> Dict[str, Any]:
    return loads_object(read_below(root, path), str(path))


def _open_at(directory: int, part: str, flags: int, path: PathLike) -> int:
    try:
        return os.open(part, flags, dir_fd=directory)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR and _is_link(directory, part):
            exc = OSError(errno.ELOOP, exc.strerror)  # a link where a directory was expected
        raise _translated(exc, path) from None


def _is_link(directory: int, part: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(part, dir_fd=directory).st_mode)
    except OSError:
        return False


def _translated(exc: OSError, path: PathLike) -> OSError:
    if exc.errno == errno.ENOENT:
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return RefusedFile(
            path, "a symbolic link, never followed: it could lead outside the state root"
        )
    if exc.errno == errno.ENOTDIR:
        return RefusedFile(path, "a component is not a directory")
    return exc
