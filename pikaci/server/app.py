"""The JSON API over run bundles (see docs/architecture.md, "Server").

Every route lives under `/api/repos/<slug>/pikaci/` and needs a bearer token. Ids are validated
before any disk access, and every path is resolved with realpath and must stay inside the
repository's state root, so neither `..` nor a symlink can make the server read another file.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Tuple

import bottle
import orjson

from pikaci.ids import ID_RULE, is_safe_id
from pikaci.model import (
    RUN_RUNNING,
    RUN_STATUSES,
    JobRecord,
    PreparedOutputsRecord,
    RecordError,
    RunRecord,
    is_run_id,
    parse_timestamp,
)
from pikaci.server.auth import TokenSet
from pikaci.store import (
    PREPARED_OUTPUTS_FILE,
    RUN_FILE,
    StateRoot,
    job_log_paths,
    load_logs_metadata,
    read_json_object,
    run_is_active,
)

API_PREFIX = "/api/repos"
DEFAULT_PAGE = 50
MAX_PAGE = 200
# the whole-log endpoint returns at most the last LOG_CAP bytes; the tail endpoint pages the rest
LOG_CAP = 8 * 1024 * 1024
TAIL_DEFAULT = 64 * 1024
TAIL_MAX = 1024 * 1024
_KINDS = ("host", "guest", "both")

Handler = Callable[..., Any]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Repo:
    slug: str
    state: StateRoot
    real_root: str

    def inside(self, path: Path) -> bool:
        real = os.path.realpath(path)
        return real == self.real_root or real.startswith(self.real_root + os.sep)

    def checked(self, path: Path, what: str) -> Path:
        if not self.inside(path):
            raise ApiError(404, f"{what} is outside the state root")
        return path

    def relative(self, text: str) -> str:
        # problems name files; clients need the place inside the root, not the server's layout
        root = str(self.state.root)
        return text[len(root) + 1 :] if text.startswith(root + os.sep) else text


def _json(status: int, data: Any) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        body=orjson.dumps(data), status=status, headers={"Content-Type": "application/json"}
    )


def _error(
    status: int, message: str, headers: Optional[Dict[str, str]] = None
) -> bottle.HTTPResponse:
    response = _json(status, {"error": message})
    for name, value in (headers or {}).items():
        response.set_header(name, value)
    return response


def make_app(repos: Mapping[str, StateRoot], tokens: TokenSet) -> bottle.Bottle:
    app = bottle.Bottle(catchall=True)
    known = {slug: Repo(slug, state, os.path.realpath(state.root)) for slug, state in repos.items()}

    def api(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapper(**kwargs: Any) -> bottle.HTTPResponse:
            problem = tokens.check(bottle.request.get_header("Authorization"))
            if problem is not None:
                return _error(401, problem, {"WWW-Authenticate": "Bearer"})
            try:
                slug = kwargs.pop("slug", None)
                if slug is not None:
                    repo = known.get(slug)
                    if repo is None:
                        raise ApiError(404, f"unknown repository `{slug}`")
                    kwargs["repo"] = repo
                return _json(200, handler(**kwargs))
            except ApiError as exc:
                return _error(exc.status, exc.message)

        return wrapper

    route = f"{API_PREFIX}/<slug>/pikaci"
    app.route(API_PREFIX, "GET", api(lambda: {"repos": sorted(known)}))
    app.route(f"{route}/runs", "GET", api(_list))
    app.route(f"{route}/run/<run_id>", "GET", api(_run))
    app.route(f"{route}/bundle/<run_id>", "GET", api(_bundle))
    app.route(f"{route}/logs/<run_id>", "GET", api(_logs))
    app.route(f"{route}/prepared-outputs/<run_id>", "GET", api(_prepared))
    app.route(f"{route}/tail/<run_id>", "GET", api(_tail))

    def fallback(error: bottle.HTTPError) -> bytes:
        # bottle's own errors (no route, wrong method, crash) in the API's shape, not HTML
        bottle.response.content_type = "application/json"
        if error.status_code in (404, 405):
            # without a token even a wrong path is a 401: the route layout is not public
            problem = tokens.check(bottle.request.get_header("Authorization"))
            if problem is not None:
                bottle.response.status = 401
                bottle.response.set_header("WWW-Authenticate", "Bearer")
                return orjson.dumps({"error": problem})
        if error.status_code >= 500:
            return orjson.dumps({"error": "internal server error"})
        return orjson.dumps({"error": error.status_line.split(" ", 1)[-1].lower()})

    for status in (400, 404, 405, 500):
        app.error(status)(fallback)
    return app


# -- loading, with every check done before the disk is touched ------------------------------------


def _run_dir(repo: Repo, run_id: str) -> Path:
    if not is_run_id(run_id):
        raise ApiError(400, f"invalid run id {run_id!r}: expected YYYYmmddTHHMMSSZ-<8 hex>")
    return repo.checked(repo.state.runs_dir / run_id, f"run `{run_id}`")


def _load_run(repo: Repo, run_id: str) -> RunRecord:
    path = _run_dir(repo, run_id) / RUN_FILE
    if not repo.inside(path):
        raise ApiError(404, f"run `{run_id}` not found")
    try:
        return RunRecord.from_dict(read_json_object(path), f"runs/{run_id}/{RUN_FILE}")
    except FileNotFoundError:
        raise ApiError(404, f"run `{run_id}` not found") from None
    except RecordError as exc:
        raise ApiError(404, repo.relative(str(exc))) from None


def _job_param() -> Optional[str]:
    job_id: Optional[str] = bottle.request.query.get("job")
    if job_id is not None and not is_safe_id(job_id):
        raise ApiError(400, f"invalid job id {job_id!r}: expected {ID_RULE}")
    return job_id


def _job(run: RunRecord, job_id: Optional[str]) -> JobRecord:
    if not run.jobs:
        raise ApiError(404, f"run `{run.run_id}` has no jobs")
    job = run.jobs[0] if job_id is None else run.job(job_id)
    if job is None:
        raise ApiError(404, f"run `{run.run_id}` has no job `{job_id}`")
    if not is_safe_id(job.id):
        raise ApiError(404, f"run `{run.run_id}` records an invalid job id")
    return job


def _log_path(repo: Repo, run: RunRecord, job: JobRecord, kind: str) -> Path:
    host, guest = job_log_paths(repo.state, run, job)
    return repo.checked(host if kind == "host" else guest, f"{kind} log of job `{job.id}`")


def _prepared_path(repo: Repo, run: RunRecord) -> Path:
    if run.prepared_outputs_path:
        return Path(run.prepared_outputs_path)
    return repo.state.runs_dir / run.run_id / PREPARED_OUTPUTS_FILE


def _load_prepared(repo: Repo, run: RunRecord) -> Optional[Dict[str, Any]]:
    """The record, or None when it is absent, corrupt or outside the state root."""
    path = _prepared_path(repo, run)
    if not repo.inside(path) or not path.is_file():
        return None
    try:
        return PreparedOutputsRecord.from_dict(read_json_object(path), str(path)).to_dict()
    except (FileNotFoundError, RecordError):
        return None


# -- handlers -------------------------------------------------------------------------------------


def _list(repo: Repo) -> Dict[str, Any]:
    query = bottle.request.query
    status = query.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise ApiError(400, f"invalid status {status!r}: expected one of {', '.join(RUN_STATUSES)}")
    target = query.get("target") or None
    limit = _int_param("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = _decode_cursor(query.get("cursor") or None)
    runs, problems = _scan_runs(repo)
    selected = [
        run
        for run in runs
        if (status is None or run.status == status)
        and (target is None or run.target_id == target)
        and (after is None or _sort_key(run) < after)
    ]
    page = selected[:limit]
    more = len(selected) > limit
    return {
        "repo": repo.slug,
        "runs": [run.to_dict() for run in page],
        "next_cursor": _encode_cursor(page[-1]) if more and page else None,
        "problems": problems,
    }


def _scan_runs(repo: Repo) -> Tuple[List[RunRecord], List[str]]:
    """Every readable run inside the root, newest first; anything else becomes a problem."""
    runs: List[RunRecord] = []
    problems: List[str] = []
    try:
        names = sorted(entry.name for entry in os.scandir(repo.state.runs_dir))
    except FileNotFoundError:
        return runs, problems
    for name in names:
        if name.startswith("."):
            continue  # runs being created, and lock files
        where = f"runs/{name}"
        path = repo.state.runs_dir / name / RUN_FILE
        if not is_run_id(name):
            problems.append(f"{where}: not a run id")
        elif not repo.inside(path):
            problems.append(f"{where}: outside the state root")
        else:
            try:
                run = RunRecord.from_dict(read_json_object(path), f"{where}/{RUN_FILE}")
            except FileNotFoundError:
                problems.append(f"{where}/{RUN_FILE}: missing (run directory without a record)")
            except RecordError as exc:
                problems.append(repo.relative(str(exc)))
            else:
                if run.run_id == name:
                    runs.append(run)
                else:
                    problems.append(f"{where}/{RUN_FILE}: records run id {run.run_id!r}")
    runs.sort(key=_sort_key, reverse=True)
    return runs, problems


def _sort_key(run: RunRecord) -> Tuple[Any, str]:
    return (parse_timestamp(run.created_at), run.run_id)


def _encode_cursor(run: RunRecord) -> str:
    raw = orjson.dumps([run.created_at, run.run_id])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: Optional[str]) -> Optional[Tuple[Any, str]]:
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


def _int_param(name: str, default: int, low: int, high: int) -> int:
    text = bottle.request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"invalid {name} {text!r}: expected an integer from {low} to {high}")
    return int(text)


def _run(repo: Repo, run_id: str) -> Dict[str, Any]:
    return _load_run(repo, run_id).to_dict()


def _bundle(repo: Repo, run_id: str) -> Dict[str, Any]:
    """`load_run_bundle`'s shape, with prepared outputs and log flags confined to the root."""
    run = _load_run(repo, run_id)
    logs = load_logs_metadata(repo.state, run)
    for job in logs.jobs:
        job.host_log_exists = job.host_log_exists and repo.inside(Path(job.host_log_path))
        job.guest_log_exists = job.guest_log_exists and repo.inside(Path(job.guest_log_path))
    return {
        "run": run.to_dict(),
        "logs": logs.to_dict(),
        "prepared_outputs": _load_prepared(repo, run),
    }


def _prepared(repo: Repo, run_id: str) -> Dict[str, Any]:
    run = _load_run(repo, run_id)
    record = _load_prepared(repo, run)
    if record is None:
        raise ApiError(404, f"prepared outputs not found for run `{run_id}`")
    return {"run_id": run.run_id, "prepared_outputs": record}


def _kind(allowed: Tuple[str, ...], default: Optional[str]) -> str:
    kind = bottle.request.query.get("kind") or default
    if kind not in allowed:
        raise ApiError(400, f"invalid kind {kind!r}: expected {'|'.join(allowed)}")
    return kind


def _logs(repo: Repo, run_id: str) -> Dict[str, Any]:
    kind = _kind(_KINDS, "both")
    job_id = _job_param()
    run = _load_run(repo, run_id)
    job = _job(run, job_id)
    texts: Dict[str, Optional[str]] = {"host": None, "guest": None}
    for name in ("host", "guest"):
        if kind in (name, "both"):
            texts[name] = _read_log(_log_path(repo, run, job, name))
    return {"run_id": run.run_id, "job": job.id, **texts}


def _read_log(path: Path) -> Optional[str]:
    """The log (its last LOG_CAP bytes when longer); None when it was never created."""
    try:
        with _open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - LOG_CAP))
            return handle.read(LOG_CAP).decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ApiError(404, f"cannot read {path.name}: {exc.strerror}") from None


def _open_regular(path: Path) -> BinaryIO:
    """Open a log for reading; a FIFO or device in its place must not block or stream forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb")


def _tail(repo: Repo, run_id: str) -> Dict[str, Any]:
    kind = _kind(("host", "guest"), "host")
    offset = _int_param("offset", 0, 0, 2**62)
    limit = _int_param("limit", TAIL_DEFAULT, 1, TAIL_MAX)
    job_id = _job_param()
    run = _load_run(repo, run_id)
    job = _job(run, job_id)
    path = _log_path(repo, run, job, kind)
    running = job.status == RUN_RUNNING and _orchestrator_alive(repo, run)
    try:
        with _open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if offset > size:
                raise ApiError(400, f"offset {offset} is past the end of the log ({size} bytes)")
            handle.seek(offset)
            chunk = handle.read(limit)
    except FileNotFoundError:
        size, chunk = 0, b""
        if offset:
            raise ApiError(400, f"offset {offset} is past the end of the log (0 bytes)") from None
    except OSError as exc:
        raise ApiError(404, f"cannot read {path.name}: {exc.strerror}") from None
    text, used = _decode_prefix(chunk)
    next_offset = offset + used
    return {
        "run_id": run.run_id,
        "job": job.id,
        "kind": kind,
        "offset": offset,
        "data": text,
        "next_offset": next_offset,
        "eof": next_offset >= size,
        "running": running,
    }


def _decode_prefix(chunk: bytes) -> Tuple[str, int]:
    """Decode `chunk`, leaving a UTF-8 sequence cut by the chunk's end for the next call."""
    try:
        return chunk.decode("utf-8"), len(chunk)
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.start >= len(chunk) - 3 and exc.start:
            return chunk[: exc.start].decode("utf-8", "replace"), exc.start
        return chunk.decode("utf-8", "replace"), len(chunk)


def _orchestrator_alive(repo: Repo, run: RunRecord) -> bool:
    if run.status != RUN_RUNNING:
        return False
    try:
        return run_is_active(repo.state.runs_dir / run.run_id)
    except OSError:
        return True  # a read-only root: trust the record
