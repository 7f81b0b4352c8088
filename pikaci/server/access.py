"""Reading run bundles for the server, confined to each repository's state root.

Ids are validated before any disk access, and every file is opened through `pikaci.confined`:
component by component below the repository's state root, never following a link and only ever
a regular file, so neither `..`, a symlink (also one swapped in at any moment) nor a FIFO can
make the server read another file or hang. Both the JSON API and the web pages read through
here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Tuple, Union

import bottle
import orjson

from pikaci.confined import RefusedFile, open_below, read_json_below
from pikaci.ids import ID_RULE, is_safe_id
from pikaci.model import (
    RUN_RUNNING,
    RUN_STATUSES,
    JobRecord,
    PreparedOutputsRecord,
    RecordError,
    RunRecord,
)
from pikaci.store import (
    PREPARED_OUTPUTS_FILE,
    RUN_FILE,
    StateRoot,
    job_log_paths,
    prepared_outputs_path,
    run_is_active,
)
from pikaci.timestamps import is_run_id, parse_timestamp

DEFAULT_PAGE = 50
MAX_PAGE = 200
# the whole-log endpoint returns at most the last LOG_CAP bytes; the tail endpoint pages the rest
LOG_CAP = 8 * 1024 * 1024
TAIL_DEFAULT = 64 * 1024
TAIL_MAX = 1024 * 1024
MAX_OFFSET = 2**62  # the largest byte offset a request may name
STREAM_CHUNK = 256 * 1024
LOG_KINDS = ("host", "guest")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# what a run.json parsed into: the record, or the problem to report about it
Parsed = Union[RunRecord, str]
FileKey = Tuple[int, int, int, int]


class CachedRun:
    __slots__ = ("encoded", "key", "parsed")

    def __init__(self, key: FileKey, parsed: Parsed) -> None:
        self.key = key
        self.parsed = parsed
        self.encoded: Optional[bytes] = None  # the record as JSON, made on first use


class RunCache:
    """Parsed `run.json` files by run name, reused while the file is the same file.

    Records are replaced by an atomic rename, so a changed record is a new inode; the key also
    holds mtime and size for roots on filesystems without stable inodes. Listing then costs a
    stat per run instead of a parse, and a listed record is encoded to JSON once. Waitress serves
    from several threads: a scan builds a new map and swaps it in whole, so a race costs at most
    a second parse.
    """

    def __init__(self) -> None:
        self._entries: Dict[str, CachedRun] = {}

    def lookup(self, name: str, key: FileKey) -> Optional[CachedRun]:
        entry = self._entries.get(name)
        return entry if entry is not None and entry.key == key else None

    def replace(self, entries: Dict[str, CachedRun]) -> None:
        self._entries = entries

    def encoded(self, run: RunRecord) -> bytes:
        """`run` as JSON bytes, encoded once while the cached record is this one."""
        entry = self._entries.get(run.run_id)
        if entry is None or entry.parsed is not run:
            return orjson.dumps(run.to_dict())
        if entry.encoded is None:
            entry.encoded = orjson.dumps(run.to_dict())
        return entry.encoded


@dataclass(frozen=True)
class BundleFile:
    """A file of a run bundle, read only through `confined`."""

    root: Path
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def open(self) -> BinaryIO:
        return open_below(self.root, self.path)

    def readable(self) -> bool:
        try:
            self.open().close()
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Repo:
    slug: str
    state: StateRoot
    real_root: str
    cache: RunCache = field(default_factory=RunCache, compare=False, repr=False)

    @classmethod
    def of(cls, slug: str, state: StateRoot) -> Repo:
        return cls(slug, state, os.path.realpath(state.root))

    def file(self, path: Path) -> BundleFile:
        return BundleFile(self.state.root, path)

    def read_record(self, path: Path, label: str) -> Dict[str, Any]:
        """A JSON record below the root; FileNotFoundError, or RecordError naming `label`."""
        try:
            return read_json_below(self.state.root, path)
        except RefusedFile as exc:
            raise RecordError(f"{label}: unreadable ({exc.strerror})") from None
        except RecordError as exc:
            raise RecordError(f"{label}: {str(exc).split(': ', 1)[-1]}") from None
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise RecordError(f"{label}: unreadable ({exc.strerror})") from None

    def relative(self, text: str) -> str:
        # problems name files; clients need the place inside the root, not the server's layout
        root = str(self.state.root)
        return text[len(root) + 1 :] if text.startswith(root + os.sep) else text


# -- query parameters, validated before anything is read ------------------------------------------


def int_param(name: str, default: int, low: int, high: int) -> int:
    text = bottle.request.query.get(name)
    if text is None or text == "":
        return default
    # a bound on the length first: int() of thousands of digits is slow, or refused
    if len(text) > 19 or not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"invalid {name} {text!r}: expected an integer from {low} to {high}")
    return int(text)


def job_param() -> Optional[str]:
    job_id: Optional[str] = bottle.request.query.get("job")
    if job_id is not None and not is_safe_id(job_id):
        raise ApiError(400, f"invalid job id {job_id!r}: expected {ID_RULE}")
    return job_id


def kind_param(allowed: Tuple[str, ...], default: Optional[str]) -> str:
    kind = bottle.request.query.get("kind") or default
    if kind not in allowed:
        raise ApiError(400, f"invalid kind {kind!r}: expected {'|'.join(allowed)}")
    return kind


def status_param() -> Optional[str]:
    status = bottle.request.query.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise ApiError(400, f"invalid status {status!r}: expected one of {', '.join(RUN_STATUSES)}")
    return status


# -- runs -----------------------------------------------------------------------------------------


def run_dir(repo: Repo, run_id: str) -> Path:
    if not is_run_id(run_id):
        raise ApiError(400, f"invalid run id {run_id!r}: expected YYYYmmddTHHMMSSZ-<8 hex>")
    return repo.state.runs_dir / run_id


def load_run(repo: Repo, run_id: str) -> RunRecord:
    label = f"runs/{run_id}/{RUN_FILE}"
    try:
        run = RunRecord.from_dict(repo.read_record(run_dir(repo, run_id) / RUN_FILE, label), label)
    except FileNotFoundError:
        raise ApiError(404, f"run `{run_id}` not found") from None
    except RecordError as exc:
        raise ApiError(404, repo.relative(str(exc))) from None
    if run.run_id != run_id:
        raise ApiError(404, f"{label}: records run id {run.run_id!r}")
    return run


def scan_runs(repo: Repo) -> Tuple[List[RunRecord], List[str]]:
    """Every readable run inside the root, newest first; anything else becomes a problem."""
    runs: List[RunRecord] = []
    problems: List[str] = []
    try:
        entries = sorted(os.scandir(repo.state.runs_dir), key=lambda entry: entry.name)
    except FileNotFoundError:
        return runs, problems
    runs_dir = str(repo.state.runs_dir)
    fresh: Dict[str, CachedRun] = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue  # runs being created, and lock files
        parsed = _scan_one(repo, entry, runs_dir, fresh)
        if isinstance(parsed, str):
            problems.append(parsed)
        else:
            runs.append(parsed)
    repo.cache.replace(fresh)
    runs.sort(key=sort_key, reverse=True)
    return runs, problems


def _scan_one(
    repo: Repo,
    entry: os.DirEntry[str],
    runs_dir: str,
    fresh: Dict[str, CachedRun],
) -> Parsed:
    name = entry.name
    where = f"runs/{name}"
    if not is_run_id(name):
        return f"{where}: not a run id"
    # plain strings, not Path: this runs for every run on every list request
    path = f"{runs_dir}{os.sep}{name}{os.sep}{RUN_FILE}"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return f"{where}/{RUN_FILE}: missing (run directory without a record)"
    except NotADirectoryError:
        return f"{where}: not a run directory"
    if entry.is_symlink():
        return f"{where}: a symbolic link, never followed (it could lead outside the state root)"
    if not stat.S_ISREG(info.st_mode):
        return f"{where}/{RUN_FILE}: not a regular file"
    # the cache only saves parsing: the file is still opened through `confined` when it changed
    key = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
    cached = repo.cache.lookup(name, key)
    if cached is None:
        cached = CachedRun(key, _parse_run(repo, Path(path), name, where))
    fresh[name] = cached
    return cached.parsed


def _parse_run(repo: Repo, path: Path, name: str, where: str) -> Parsed:
    try:
        label = f"{where}/{RUN_FILE}"
        run = RunRecord.from_dict(repo.read_record(path, label), label)
    except FileNotFoundError:
        return f"{where}/{RUN_FILE}: missing (run directory without a record)"
    except RecordError as exc:
        return repo.relative(str(exc))
    if run.run_id != name:
        return f"{where}/{RUN_FILE}: records run id {run.run_id!r}"
    return run


@dataclass(frozen=True)
class RunPage:
    runs: List[RunRecord]
    next_cursor: Optional[str]
    problems: List[str]


def page_of_runs(
    repo: Repo, status: Optional[str], target: Optional[str], limit: int, cursor: Optional[str]
) -> RunPage:
    """Newest first, filtered; `cursor` is the `next_cursor` of the previous page."""
    after = decode_cursor(cursor)
    runs, problems = scan_runs(repo)
    selected = [
        run
        for run in runs
        if (status is None or run.status == status)
        and (target is None or run.target_id == target)
        and (after is None or sort_key(run) < after)
    ]
    page = selected[:limit]
    more = len(selected) > limit
    return RunPage(page, encode_cursor(page[-1]) if more and page else None, problems)


# every list request sorts every run by its creation time: parse each timestamp once
_created = functools.lru_cache(maxsize=65536)(parse_timestamp)


def sort_key(run: RunRecord) -> Tuple[Any, str]:
    return (_created(run.created_at), run.run_id)


def encode_cursor(run: RunRecord) -> str:
    raw = orjson.dumps([run.created_at, run.run_id])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: Optional[str]) -> Optional[Tuple[Any, str]]:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, run_id = orjson.loads(raw)
        if not is_run_id(run_id):
            raise ValueError(run_id)
        return (parse_timestamp(created_at), run_id)
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
        raise ApiError(400, "invalid cursor") from None


def find_job(run: RunRecord, job_id: Optional[str]) -> JobRecord:
    if not run.jobs:
        raise ApiError(404, f"run `{run.run_id}` has no jobs")
    job = run.jobs[0] if job_id is None else run.job(job_id)
    if job is None:
        raise ApiError(404, f"run `{run.run_id}` has no job `{job_id}`")
    if not is_safe_id(job.id):
        raise ApiError(404, f"run `{run.run_id}` records an invalid job id")
    return job


def load_job(repo: Repo, run_id: str) -> Tuple[RunRecord, JobRecord]:
    """The run and the job the `job` parameter names (its first job without one); the job id is
    checked before the run is read."""
    job_id = job_param()
    run = load_run(repo, run_id)
    return run, find_job(run, job_id)


def orchestrator_alive(repo: Repo, run: RunRecord) -> bool:
    if run.status != RUN_RUNNING:
        return False
    try:
        return run_is_active(repo.state.runs_dir / run.run_id)
    except OSError:
        return True  # a read-only root: trust the record


def job_running(repo: Repo, run: RunRecord, job: JobRecord) -> bool:
    return job.status == RUN_RUNNING and orchestrator_alive(repo, run)


# -- prepared outputs -----------------------------------------------------------------------------


def load_prepared(repo: Repo, run: RunRecord) -> Optional[Dict[str, Any]]:
    """The record, or None when it is absent, corrupt or outside the state root."""
    path = prepared_outputs_path(repo.state, run)
    try:
        data = repo.read_record(path, PREPARED_OUTPUTS_FILE)
        return PreparedOutputsRecord.from_dict(data, str(path)).to_dict()
    except (FileNotFoundError, RecordError):
        return None


# -- logs -----------------------------------------------------------------------------------------


def log_path(repo: Repo, run: RunRecord, job: JobRecord, kind: str) -> BundleFile:
    host, guest = job_log_paths(repo.state, run, job)
    return repo.file(host if kind == "host" else guest)
