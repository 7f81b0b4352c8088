"""The JSON API over run bundles (see docs/architecture.md, "Server").

Every route lives under `/api/repos/<slug>/pikaci/` and needs a bearer token; reading goes through
`access`, which confines it to the repository's state root.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import bottle
import orjson

from pikaci.server.access import (
    DEFAULT_PAGE,
    LOG_KINDS,
    MAX_OFFSET,
    MAX_PAGE,
    TAIL_DEFAULT,
    TAIL_MAX,
    ApiError,
    Repo,
    int_param,
    job_running,
    kind_param,
    load_job,
    load_prepared,
    load_run,
    log_path,
    page_of_runs,
    status_param,
)
from pikaci.server.auth import TokenSet
from pikaci.server.logs import (
    read_log_chunk,
    read_log_end,
    stream_log,
)
from pikaci.store import load_logs_metadata

API_PREFIX = "/api/repos"
Handler = Callable[..., Any]


def json_response(status: int, data: Any) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        body=orjson.dumps(data), status=status, headers={"Content-Type": "application/json"}
    )


def json_error(
    status: int, message: str, headers: Optional[Dict[str, str]] = None
) -> bottle.HTTPResponse:
    response = json_response(status, {"error": message})
    for name, value in (headers or {}).items():
        response.set_header(name, value)
    return response


def install_api(app: bottle.Bottle, known: Mapping[str, Repo], tokens: TokenSet) -> None:
    def api(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapper(**kwargs: Any) -> bottle.HTTPResponse:
            problem = tokens.check(bottle.request.environ.get("HTTP_AUTHORIZATION"))
            if problem is not None:
                return json_error(401, problem, {"WWW-Authenticate": "Bearer"})
            try:
                slug = kwargs.pop("slug", None)
                if slug is not None:
                    repo = known.get(slug)
                    if repo is None:
                        raise ApiError(404, f"unknown repository `{slug}`")
                    kwargs["repo"] = repo
                result = handler(**kwargs)
            except ApiError as exc:
                return json_error(exc.status, exc.message)
            if isinstance(result, bottle.HTTPResponse):
                return result
            return json_response(200, result)

        return wrapper

    route = f"{API_PREFIX}/<slug>/pikaci"
    app.route(API_PREFIX, "GET", api(lambda: {"repos": sorted(known)}))
    app.route(f"{route}/runs", "GET", api(_list))
    app.route(f"{route}/run/<run_id>", "GET", api(run_body))
    app.route(f"{route}/bundle/<run_id>", "GET", api(_bundle))
    app.route(f"{route}/logs/<run_id>", "GET", api(logs_body))
    app.route(f"{route}/raw-log/<run_id>", "GET", api(raw_log_response))
    app.route(f"{route}/prepared-outputs/<run_id>", "GET", api(prepared_body))
    app.route(f"{route}/tail/<run_id>", "GET", api(_tail))


def _list(repo: Repo) -> Dict[str, Any]:
    query = bottle.request.query
    status = status_param()
    limit = int_param("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    page = page_of_runs(
        repo, status, query.get("target") or None, limit, query.get("cursor") or None
    )
    return {
        "repo": repo.slug,
        # each record is encoded once while its run.json is unchanged (see access.RunCache)
        "runs": [orjson.Fragment(repo.cache.encoded(run)) for run in page.runs],
        "next_cursor": page.next_cursor,
        "problems": page.problems,
    }


def run_body(repo: Repo, run_id: str) -> Dict[str, Any]:
    return load_run(repo, run_id).to_dict()


def _bundle(repo: Repo, run_id: str) -> Dict[str, Any]:
    """`load_run_bundle`'s shape, with prepared outputs and log flags confined to the root."""
    run = load_run(repo, run_id)
    logs = load_logs_metadata(repo.state, run)
    for job in logs.jobs:
        job.host_log_exists = repo.file(Path(job.host_log_path)).readable()
        job.guest_log_exists = repo.file(Path(job.guest_log_path)).readable()
    return {
        "run": run.to_dict(),
        "logs": logs.to_dict(),
        "prepared_outputs": load_prepared(repo, run),
    }


def prepared_body(repo: Repo, run_id: str) -> Dict[str, Any]:
    run = load_run(repo, run_id)
    record = load_prepared(repo, run)
    if record is None:
        raise ApiError(404, f"prepared outputs not found for run `{run_id}`")
    return {"run_id": run.run_id, "prepared_outputs": record}


def logs_body(repo: Repo, run_id: str) -> Dict[str, Any]:
    """Upstream's `{run_id, job, host, guest}`; a log longer than LOG_CAP is its end, and
    `omitted_bytes` says how much was cut from its start (0: the whole log)."""
    kind = kind_param((*LOG_KINDS, "both"), "both")
    run, job = load_job(repo, run_id)
    texts: Dict[str, Optional[str]] = {"host": None, "guest": None}
    omitted = {"host": 0, "guest": 0}
    for name in LOG_KINDS:
        if kind in (name, "both"):
            end = read_log_end(log_path(repo, run, job, name))
            if end is not None:
                texts[name] = end.text
                omitted[name] = end.omitted_bytes
    return {"run_id": run.run_id, "job": job.id, **texts, "omitted_bytes": omitted}


def raw_log_response(
    repo: Repo, run_id: str, headers: Optional[Mapping[str, str]] = None
) -> bottle.HTTPResponse:
    """The whole log as text, streamed: memory stays at one chunk whatever its size. Served by
    the API (`raw-log`) and the log page's Raw link."""
    kind = kind_param(LOG_KINDS, "host")
    run, job = load_job(repo, run_id)
    try:
        size, chunks = stream_log(log_path(repo, run, job, kind))
    except FileNotFoundError:
        raise ApiError(404, f"job `{job.id}` has no {kind} log") from None
    response_headers = {
        **(headers or {}),
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Length": str(size),
        "X-Content-Type-Options": "nosniff",
    }
    return bottle.HTTPResponse(body=chunks, status=200, headers=response_headers)


def _tail(repo: Repo, run_id: str) -> Dict[str, Any]:
    kind = kind_param(LOG_KINDS, "host")
    offset = int_param("offset", 0, 0, MAX_OFFSET)
    limit = int_param("limit", TAIL_DEFAULT, 1, TAIL_MAX)
    run, job = load_job(repo, run_id)
    chunk = read_log_chunk(log_path(repo, run, job, kind), offset, limit)
    return {
        "run_id": run.run_id,
        "job": job.id,
        "kind": kind,
        "offset": offset,
        "data": chunk.text,
        "next_offset": chunk.end,
        "eof": chunk.caught_up,
        "running": job_running(repo, run, job),
    }
