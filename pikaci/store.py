"""The state root: layout, atomic writes, run locks, loading, listing, gc and run bundles.

Layout (under the state root):

    runs/<run_id>/run.json, plan.json, prepared-outputs.json
    runs/<run_id>/jobs/<job_id>/status.json, host.log, artifacts/{guest.log,result.json,...}
    cache/snapshots/<content_hash>/      content-addressed workspace snapshots
    cache/host-local/lane-<id>/          materialized workspaces of local host-process lanes
    doit.sqlite3                         doit's dependency database

Every JSON file is written atomically (temp file in the same directory, fsync, rename), so a
reader sees the old or the new version, never a torn one, whatever happens to the writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    TextIO,
    Union,
)

from pikaci.confined import is_regular_below, parts_below, read_json_below, read_regular, rebased
from pikaci.events import JobLogsMetadata, RunLogsMetadata
from pikaci.ids import ID_RULE, is_safe_id
from pikaci.model import (
    JobRecord,
    PreparedOutputsRecord,
    RecordError,
    RunRecord,
    dumps_pretty,
    loads_object,
)
from pikaci.timestamps import is_run_id, parse_timestamp

ENV_STATE_ROOT = "PIKACI_STATE_ROOT"
DEFAULT_STATE_DIR = ".pikaci"
RUN_FILE = "run.json"
PLAN_FILE = "plan.json"
PREPARED_OUTPUTS_FILE = "prepared-outputs.json"
JOB_STATUS_FILE = "status.json"
HOST_LOG = "host.log"
GUEST_LOG = "guest.log"
RESULT_FILE = "result.json"
SNAPSHOT_NAME = re.compile(r"^[0-9a-f]{64}(-[0-9a-f]{16})?$")
_UPDATE_LOCK = ".lock"
_ACTIVE_LOCK = ".active"
STAGING_PREFIX = ".new-"


class StoreError(Exception):
    """A user-facing error about the state root; the message is one line."""


class RunNotFound(StoreError):
    pass


def resolve_state_root(
    flag: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
    cwd: Optional[Path] = None,
) -> Path:
    """`--state-root` > `PIKACI_STATE_ROOT` > `<cwd>/.pikaci`, made absolute."""
    env = os.environ if environ is None else environ
    base = cwd or Path.cwd()
    chosen = flag or env.get(ENV_STATE_ROOT, "").strip() or DEFAULT_STATE_DIR
    return (base / Path(chosen).expanduser()).absolute()


# -- atomic writes ----------------------------------------------------------------------------


def atomic_symlink(link: Path, target: Union[str, Path]) -> None:
    """`link` points at `target`, replaced in one step (a reader sees the old or the new one)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.replace(link)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers only ever see a complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # makes the rename itself durable; some filesystems refuse fsync on directories
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, dumps_pretty(data))


def read_json_object(path: Path) -> Dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise  # absent is not corrupt: callers tell the two apart
    except OSError as exc:
        raise RecordError(f"{path}: unreadable ({exc.strerror})") from None
    return loads_object(raw, str(path))


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Exclusive flock on `path`; yields False when non-blocking and already held elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        yield True
    finally:
        os.close(fd)


# -- the state root ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StateRoot:
    root: Path

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def snapshots_dir(self) -> Path:
        return self.cache_dir / "snapshots"

    @property
    def dep_file(self) -> Path:
        return self.root / "doit.sqlite3"

    def host_local_dir(self, lane_id: str) -> Path:
        return self.cache_dir / "host-local" / f"lane-{lane_id}"

    def run_dir(self, run_id: str) -> Path:
        check_run_id(run_id)
        return self.runs_dir / run_id

    def job_dir(self, run_id: str, job_id: str) -> Path:
        if not is_safe_id(job_id):
            raise StoreError(f"invalid job id {job_id!r}: expected {ID_RULE}")
        return self.run_dir(run_id) / "jobs" / job_id


def _checked_job_id(job_id: str) -> str:
    if not is_safe_id(job_id):
        raise StoreError(f"invalid job id {job_id!r}: expected {ID_RULE}")
    return job_id


def check_run_id(run_id: str) -> None:
    if not is_run_id(run_id):
        raise StoreError(f"invalid run id {run_id!r}: expected YYYYmmddTHHMMSSZ-<8 hex>")


# -- writing runs -----------------------------------------------------------------------------


class RunWriter:
    """Read-modify-write access to one run's records, safe across threads and processes."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.run_path = run_dir / RUN_FILE

    def create(self, run: RunRecord) -> None:
        """Write `run.json`, creating the run directory complete with it when it is new."""
        if self.run_dir.is_dir():
            with file_lock(self.run_dir / _UPDATE_LOCK):
                write_json(self.run_path, run.to_dict())
            return
        with self.begin(run):
            pass

    @contextlib.contextmanager
    def begin(self, run: RunRecord) -> Iterator[None]:
        """Create the run and hold its liveness lock (see `active`) until the context exits.

        The directory is assembled under a dot name and renamed into place, so a reader never
        sees a run directory without its `run.json` or a live run without its lock, even when
        the orchestrator is killed halfway.
        """
        staging = self.run_dir.with_name(f"{STAGING_PREFIX}{self.run_dir.name}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "jobs").mkdir(parents=True)
        try:
            # the lock follows the inode through the rename
            with file_lock(staging / _ACTIVE_LOCK):
                write_json(staging / RUN_FILE, run.to_dict())
                staging.rename(self.run_dir)
                yield
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # only left when the rename never happened

    def read(self) -> RunRecord:
        return RunRecord.from_dict(read_json_object(self.run_path), str(self.run_path))

    def update(self, change: Callable[[RunRecord], None]) -> RunRecord:
        """Read-modify-write `run.json` under the run's lock."""
        return self.commit([], change)

    def write_job(self, job: JobRecord) -> RunRecord:
        """Write `jobs/<id>/status.json` and upsert the job into `run.json`."""
        return self.commit([job])

    def commit(
        self,
        jobs: Sequence[JobRecord],
        change: Optional[Callable[[RunRecord], None]] = None,
        written_jobs: Sequence[JobRecord] = (),
    ) -> RunRecord:
        """Write each job's `status.json`, then `run.json` once with the jobs and `change`.

        `written_jobs` already have their `status.json` and are only upserted into `run.json`.
        """
        with file_lock(self.run_dir / _UPDATE_LOCK):
            for job in jobs:
                self.write_job_file(job)
            run = self.read()
            for job in [*written_jobs, *jobs]:
                run.upsert_job(job)
            if change is not None:
                change(run)
            write_json(self.run_path, run.to_dict())
            return run

    def write_job_file(self, job: JobRecord) -> None:
        """`jobs/<id>/status.json` alone; `run.json` must be brought along with `commit`."""
        path = self.run_dir / "jobs" / _checked_job_id(job.id) / JOB_STATUS_FILE
        write_json(path, job.to_dict())

    def update_prepared_outputs(self, change: Callable[[PreparedOutputsRecord], None]) -> None:
        path = self.run_dir / PREPARED_OUTPUTS_FILE
        with file_lock(self.run_dir / _UPDATE_LOCK):
            try:
                record = PreparedOutputsRecord.from_dict(read_json_object(path), str(path))
            except FileNotFoundError:
                record = PreparedOutputsRecord()
            change(record)
            write_json(path, record.to_dict())

    def read_job(self, job_id: str) -> JobRecord:
        path = self.run_dir / "jobs" / job_id / JOB_STATUS_FILE
        return JobRecord.from_dict(read_json_object(path), str(path))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Held by the orchestrator for the run's lifetime; gc and list use it to spot live runs."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.run_dir / _ACTIVE_LOCK):
            yield


def run_is_active(run_dir: Path) -> bool:
    lock = run_dir / _ACTIVE_LOCK
    if not lock.exists():
        return False
    with file_lock(lock, blocking=False) as acquired:
        return not acquired


# -- reading runs -----------------------------------------------------------------------------


def load_run_record(state: StateRoot, run_id: str) -> RunRecord:
    path = state.run_dir(run_id) / RUN_FILE
    try:
        data = read_record(state, path)
    except FileNotFoundError:
        raise RunNotFound(f"run `{run_id}` not found under {state.runs_dir}") from None
    return _checked_run(RunRecord.from_dict(data, str(path)), run_id, path)


def read_record(state: StateRoot, path: Path) -> Dict[str, Any]:
    """A JSON record of the state root, read without following links; FileNotFoundError when
    absent, RecordError when unreadable or not a JSON object."""
    try:
        if parts_below(state.root, path) is None:
            # a record may name a file elsewhere (prepared outputs): still no link, FIFO or device
            return loads_object(read_regular(path), str(path))
        return read_json_below(state.root, path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RecordError(f"{path}: unreadable ({exc.strerror})") from None


def _checked_run(run: RunRecord, name: str, path: Path) -> RunRecord:
    if run.run_id != name:
        raise RecordError(f"{path}: records run id {run.run_id!r}, not its directory's {name!r}")
    return run


@dataclass
class RunListing:
    runs: List[RunRecord] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)


def list_runs(state: StateRoot) -> RunListing:
    """Every decodable run, newest first; undecodable ones are reported, never fatal."""
    listing = RunListing()
    try:
        entries = sorted(os.scandir(state.runs_dir), key=lambda entry: entry.name)
    except FileNotFoundError:
        return listing
    for entry in entries:
        if entry.name.startswith(".") or entry.is_file(follow_symlinks=False):
            continue  # runs being created, lock files, notes people leave
        problem = not_a_run(entry)
        if problem is not None:
            listing.problems.append(f"{entry.path}: {problem}")
            continue
        path = Path(entry.path) / RUN_FILE
        try:
            run = RunRecord.from_dict(read_record(state, path), str(path))
            listing.runs.append(_checked_run(run, entry.name, path))
        except FileNotFoundError:
            listing.problems.append(f"{path}: missing (run directory without a record)")
        except RecordError as exc:
            listing.problems.append(str(exc))
    listing.runs.sort(key=_created_key, reverse=True)
    return listing


def not_a_run(entry: os.DirEntry[str]) -> Optional[str]:
    """Why an entry of `runs/` is not a run directory, or None when it is one."""
    if entry.is_symlink():
        return "a symbolic link, not a run directory"
    if not is_run_id(entry.name):
        return "not a run id"
    if not entry.is_dir(follow_symlinks=False):
        return "not a directory"
    return None


def _created_key(run: RunRecord) -> Any:
    return (parse_timestamp(run.created_at), run.run_id)


def job_log_paths(state: StateRoot, run: RunRecord, job: JobRecord) -> tuple[Path, Path]:
    """Where the job's logs are now: the record's absolute paths, rebased on this root when
    the root has moved since (both keep the layout below `runs/`)."""
    job_dir = state.runs_dir / run.run_id / "jobs" / job.id
    host = Path(job.host_log_path) if job.host_log_path else job_dir / HOST_LOG
    guest = Path(job.guest_log_path) if job.guest_log_path else job_dir / "artifacts" / GUEST_LOG
    return rebased(state.root, host), rebased(state.root, guest)


def load_logs_metadata(state: StateRoot, run: RunRecord) -> RunLogsMetadata:
    """Derived from the record alone; missing logs only flip the `*_exists` flags."""
    jobs = []
    for job in run.jobs:
        host, guest = job_log_paths(state, run, job)
        jobs.append(
            JobLogsMetadata(
                id=job.id,
                host_log_path=str(host),
                guest_log_path=str(guest),
                host_log_exists=is_regular_below(state.root, host),
                guest_log_exists=is_regular_below(state.root, guest),
            )
        )
    return RunLogsMetadata(run_id=run.run_id, status=run.status, jobs=jobs)


def prepared_outputs_path(state: StateRoot, run: RunRecord) -> Path:
    if run.prepared_outputs_path:
        return rebased(state.root, run.prepared_outputs_path)
    return state.runs_dir / run.run_id / PREPARED_OUTPUTS_FILE


def load_prepared_outputs(state: StateRoot, run: RunRecord) -> Optional[PreparedOutputsRecord]:
    """None when the run has no record; RecordError when it exists but is corrupt."""
    path = prepared_outputs_path(state, run)
    try:
        data = read_record(state, path)
    except FileNotFoundError:
        return None
    return PreparedOutputsRecord.from_dict(data, str(path))


def load_run_bundle(
    state: StateRoot, run_id: str, warnings: Optional[TextIO] = None
) -> Dict[str, Any]:
    """`{run, logs, prepared_outputs}`: the run is mandatory, prepared outputs best-effort."""
    run = load_run_record(state, run_id)
    prepared: Optional[Dict[str, Any]] = None
    try:
        record = load_prepared_outputs(state, run)
        prepared = record.to_dict() if record else None
    except RecordError as exc:
        (warnings or sys.stderr).write(f"warning: ignoring prepared outputs: {exc}\n")
    return {
        "run": run.to_dict(),
        "logs": load_logs_metadata(state, run).to_dict(),
        "prepared_outputs": prepared,
    }
