"""The web pages: run list, run page, log viewer, and the login form (docs/architecture.md, "Web").

Pages need the session cookie that `POST /login` sets after checking a token against the same
token set as the API. They read through `access`, so the pages are confined to each state root
exactly like the API. Templates are bottle's SimpleTemplate, which escapes every `{{value}}`.
"""

from __future__ import annotations

import functools
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import bottle
import orjson

from pikaci.model import RUN_RUNNING, RUN_STATUSES, JobRecord, RunRecord
from pikaci.server.access import (
    DEFAULT_PAGE,
    LOG_KINDS,
    MAX_OFFSET,
    TAIL_DEFAULT,
    ApiError,
    Repo,
    int_param,
    job_running,
    kind_param,
    load_job,
    load_prepared,
    load_run,
    log_path,
    orchestrator_alive,
    page_of_runs,
    status_param,
)
from pikaci.server.ansi import ansi_to_html
from pikaci.server.api import raw_log_response
from pikaci.server.auth import SESSION_COOKIE, SESSION_SECONDS, WebAuth, same_origin
from pikaci.server.logs import (
    read_log_page,
    read_log_page_before,
)
from pikaci.server.timeline import format_duration, parse_moment, render_timeline
from pikaci.vocabulary import shown_runtime

VIEWS = Path(__file__).resolve().parent / "views"
# one list for every render: bottle caches compiled templates by the lookup list's identity
TEMPLATE_LOOKUP = [str(VIEWS)]
STATIC = Path(__file__).resolve().parent / "static"
LOG_PAGE = 256 * 1024
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # inline styles only: the timeline's <style> and 256-colour log spans; no inline script
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}
Handler = Callable[..., Any]


def render(name: str, http_status: int = 200, **values: Any) -> bottle.HTTPResponse:
    body = bottle.template(name, template_lookup=TEMPLATE_LOOKUP, **values)
    headers = {"Content-Type": "text/html; charset=utf-8", **HEADERS}
    return bottle.HTTPResponse(body=body, status=http_status, headers=headers)


def _error_page(status: int, message: str, auth: WebAuth) -> bottle.HTTPResponse:
    return render("error", status, title=f"{status}", message=message, logged_in=_logged_in(auth))


def web_error_page(error: bottle.HTTPError, auth: WebAuth) -> str:
    """bottle's own errors (no route, wrong method, crash) on a page path, as a page."""
    bottle.response.content_type = "text/html; charset=utf-8"
    for name, value in HEADERS.items():
        bottle.response.set_header(name, value)
    message = "internal server error" if error.status_code >= 500 else error.status_line
    return str(
        bottle.template(
            "error",
            template_lookup=TEMPLATE_LOOKUP,
            title=str(error.status_code),
            message=message,
            logged_in=_logged_in(auth),
        )
    )


def _logged_in(auth: WebAuth) -> bool:
    return auth.logged_in(_session_cookie(), time.time())


def _session_cookie() -> Optional[str]:
    # a cookie header that is not latin-1 text is no session (bottle would raise on it)
    try:
        value = bottle.request.get_cookie(SESSION_COOKIE)
    except (UnicodeError, ValueError):
        return None
    return value if isinstance(value, str) else None


def _safe_next(target: Optional[str]) -> str:
    r"""Only a path on this server: `//host`, `/\host`, or either hidden behind a tab or newline
    (browsers drop those from URLs) would leave it."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target)
    ):
        return "/"
    parts = urllib.parse.urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


def _redirect(location: str) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(status=303, headers={"Location": location, **HEADERS})


def install_web(app: bottle.Bottle, known: Mapping[str, Repo], auth: WebAuth) -> None:
    tokens = auth.tokens

    def page(handler: Handler, fragment: bool = False) -> Handler:
        @functools.wraps(handler)
        def wrapper(**kwargs: Any) -> bottle.HTTPResponse:
            if not _logged_in(auth):
                if fragment:
                    return _json(401, {"error": "log in again"})
                here = bottle.request.fullpath
                if bottle.request.query_string:
                    here += "?" + bottle.request.query_string
                return _redirect("/login?" + urllib.parse.urlencode({"next": here}))
            try:
                slug = kwargs.pop("slug", None)
                if slug is not None:
                    repo = known.get(slug)
                    if repo is None:
                        raise ApiError(404, f"unknown repository `{slug}`")
                    kwargs["repo"] = repo
                result: bottle.HTTPResponse = handler(**kwargs)
                return result
            except ApiError as exc:
                if fragment:
                    return _json(exc.status, {"error": exc.message})
                return _error_page(exc.status, exc.message, auth)

        return wrapper

    def index() -> bottle.HTTPResponse:
        if len(known) == 1:
            return _redirect(f"/repos/{next(iter(known))}/runs")
        return render("repos", title="Repositories", repos=sorted(known), logged_in=True)

    def login_form() -> bottle.HTTPResponse:
        target = _safe_next(bottle.request.query.get("next"))
        if _logged_in(auth):
            return _redirect(target)
        return render("login", title="Log in", next=target, failed=False, logged_in=False)

    def login() -> bottle.HTTPResponse:
        if not same_origin(bottle.request.environ):
            return _error_page(403, "cross-site login refused", auth)
        address = str(bottle.request.environ.get("REMOTE_ADDR") or "?")
        now = time.time()
        wait = auth.throttle.wait_secs(address, now)
        if wait > 0:
            page = _error_page(429, f"too many failed logins; try again in {wait:.0f} s", auth)
            page.set_header("Retry-After", str(int(wait) + 1))
            return page
        form = bottle.request.forms
        target = _safe_next(form.getunicode("next"))
        given = (form.getunicode("token") or "").strip().encode("utf-8")
        token = tokens.matching(given) if given else None
        if token is None:
            auth.throttle.failed(address, now)
            return render("login", 401, title="Log in", next=target, failed=True, logged_in=False)
        auth.throttle.succeeded(address)
        response = _redirect(target)
        response.set_cookie(
            SESSION_COOKIE,
            auth.sessions.issue(now),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            secure=True,
            # Lax: a link from the forge opens the page; nothing changes state on a GET
            samesite="lax",
        )
        return response

    def logout() -> bottle.HTTPResponse:
        if not same_origin(bottle.request.environ):
            return _error_page(403, "cross-site logout refused", auth)
        auth.sessions.revoke(_session_cookie())  # a copy of the cookie stops working too
        response = _redirect("/login")
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True)
        return response

    def static(name: str) -> Any:
        response = bottle.static_file(name, root=str(STATIC))
        response.set_header("Cache-Control", "no-cache")
        return response

    app.route("/", "GET", page(index))
    app.route("/login", "GET", login_form)
    app.route("/login", "POST", login)
    app.route("/logout", "POST", logout)
    app.route("/static/<name>", "GET", static)
    base = "/repos/<slug>/runs"
    app.route(base, "GET", page(_run_list))
    app.route(f"{base}/<run_id>", "GET", page(_run_page))
    app.route(f"{base}/<run_id>/log", "GET", page(_log_page))
    app.route(f"{base}/<run_id>/log-tail", "GET", page(_log_tail, fragment=True))
    app.route(f"{base}/<run_id>/raw", "GET", page(_raw_log))


def _json(status: int, data: Any) -> bottle.HTTPResponse:
    headers = {"Content-Type": "application/json", **HEADERS}
    return bottle.HTTPResponse(body=orjson.dumps(data), status=status, headers=headers)


# -- pages ----------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _seconds_between(start: Optional[str], end: Optional[str], now: datetime) -> Optional[float]:
    begun = parse_moment(start)
    ended = parse_moment(end) if end else now
    if begun is None or ended is None:
        return None
    return max(0.0, (ended - begun).total_seconds())


def _duration(start: Optional[str], end: Optional[str], now: datetime) -> str:
    seconds = _seconds_between(start, end, now)
    return "" if seconds is None else format_duration(seconds)


def _age(stamp: str, now: datetime) -> str:
    seconds = _seconds_between(stamp, None, now)
    if seconds is None:
        return ""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def _status(run: RunRecord, alive: bool) -> str:
    # a `running` record whose orchestrator is gone will never finish: say so
    return "interrupted" if run.status == RUN_RUNNING and not alive else run.status


def _run_list(repo: Repo) -> bottle.HTTPResponse:
    query = bottle.request.query
    status = status_param()
    target = query.get("target") or None
    page = page_of_runs(repo, status, target, DEFAULT_PAGE, query.get("cursor") or None)
    now = _now()
    rows = []
    for run in page.runs:
        alive = orchestrator_alive(repo, run)
        rows.append(
            {
                "run_id": run.run_id,
                "url": f"/repos/{repo.slug}/runs/{run.run_id}",
                "status": _status(run, alive),
                "target": run.target_id or "",
                "description": run.target_description or "",
                "duration": _duration(run.created_at, run.finished_at if not alive else None, now),
                "age": _age(run.created_at, now),
                "created_at": run.created_at,
                "jobs": len(run.jobs),
            }
        )
    next_url = None
    if page.next_cursor:
        params = {"status": status or "", "target": target or "", "cursor": page.next_cursor}
        next_url = f"?{urllib.parse.urlencode({k: v for k, v in params.items() if v})}"
    return render(
        "runs",
        title=f"Runs · {repo.slug}",
        slug=repo.slug,
        rows=rows,
        statuses=RUN_STATUSES,
        status=status or "",
        target=target or "",
        next_url=next_url,
        problems=page.problems,
        refresh=10 if any(row["status"] == RUN_RUNNING for row in rows) else 0,
        logged_in=True,
    )


def _job_row(repo: Repo, run: RunRecord, job: JobRecord, now: datetime) -> Dict[str, Any]:
    logs = {}
    for kind in LOG_KINDS:
        if log_path(repo, run, job, kind).readable():
            logs[kind] = _log_url(repo, run, job, kind)
    return {
        "id": job.id,
        "description": job.description,
        "status": job.status,
        "execution": f"{job.placement} + {shown_runtime(job.runtime, job.sandbox)}"
        if job.placement
        else job.executor,
        "duration": _duration(job.started_at, job.finished_at, now) if job.started_at else "",
        "exit_code": "" if job.exit_code is None else str(job.exit_code),
        "message": job.message or "",
        "reused_from": job.reused_from_run or "",
        "reused_url": (
            f"/repos/{repo.slug}/runs/{job.reused_from_run}" if job.reused_from_run else ""
        ),
        "logs": logs,
    }


def _log_url(repo: Repo, run: RunRecord, job: JobRecord, kind: str) -> str:
    query = urllib.parse.urlencode({"job": job.id, "kind": kind})
    return f"/repos/{repo.slug}/runs/{run.run_id}/log?{query}"


def _prepared_rows(record: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for output in (record or {}).get("outputs", []):
        payload = output.get("payload") or {}
        mounts = [
            f"{m.get('guest_path', '')} ({'ro' if m.get('read_only', True) else 'rw'})"
            for m in payload.get("mounts", [])
            if isinstance(m, dict)
        ]
        rows.append(
            {
                "node_id": output.get("node_id", ""),
                "output_name": output.get("output_name", ""),
                "installable": output.get("installable", ""),
                "realized_path": output.get("realized_path", ""),
                "residency": output.get("residency", ""),
                "mounts": mounts,
            }
        )
    return rows


def _run_page(repo: Repo, run_id: str) -> bottle.HTTPResponse:
    run = load_run(repo, run_id)
    now = _now()
    alive = orchestrator_alive(repo, run)
    uploads = [
        {
            "kind": upload.kind,
            "subject": upload.subject,
            "builder": upload.builder,
            "size": _size(upload.bytes),
            "paths": upload.paths,
            "seconds": f"{upload.seconds:.2f} s",
            "skipped": upload.skipped,
        }
        for upload in run.uploads
    ]
    return render(
        "run",
        title=f"Run {run.run_id}",
        slug=repo.slug,
        run=run,
        status=_status(run, alive),
        duration=_duration(run.created_at, run.finished_at if not alive else None, now),
        age=_age(run.created_at, now),
        jobs=[_job_row(repo, run, job, now) for job in run.jobs],
        timeline=render_timeline(run, now),
        prepared=_prepared_rows(load_prepared(repo, run)),
        uploads=uploads,
        refresh=5 if alive else 0,
        logged_in=True,
    )


def _size(count: float) -> str:
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB"):
        count /= 1024
        if count < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} GiB"


def _log_page(repo: Repo, run_id: str) -> bottle.HTTPResponse:
    kind = kind_param(LOG_KINDS, "host")
    run, job = load_job(repo, run_id)
    path = log_path(repo, run, job, kind)
    query = bottle.request.query
    if query.get("before") is not None:
        shown = read_log_page_before(path, int_param("before", 0, 0, MAX_OFFSET), LOG_PAGE)
    elif query.get("offset") is not None:
        # `cont` marks a Next link: continue exactly where the last page ended, even mid-line
        align = query.get("cont") != "1"
        shown = read_log_page(path, int_param("offset", 0, 0, MAX_OFFSET), LOG_PAGE, align=align)
    else:
        # a CI log is read from its end: that is where a failure explains itself
        shown = read_log_page_before(path, MAX_OFFSET, LOG_PAGE)
    base = f"/repos/{repo.slug}/runs/{run.run_id}/log?"

    def link(**params: Any) -> str:
        return base + urllib.parse.urlencode({"job": job.id, "kind": kind, **params})

    running = job_running(repo, run, job)
    at_end = shown.end >= shown.size
    others = [
        {"job": other.id, "kind": other_kind, "url": _log_url(repo, run, other, other_kind)}
        for other in run.jobs
        for other_kind in LOG_KINDS
    ]
    tail_query = urllib.parse.urlencode({"job": job.id, "kind": kind})
    return render(
        "log",
        title=f"{job.id} {kind} log · {run.run_id}",
        slug=repo.slug,
        run=run,
        job=job,
        kind=kind,
        others=others,
        html=ansi_to_html(shown.text),
        start=shown.start,
        end=shown.end,
        size_text=_size(shown.size),
        first_url=link(offset=0) if shown.start > 0 else None,
        prev_url=link(before=shown.start) if shown.start > 0 else None,
        next_url=None if at_end else link(offset=shown.end, cont=1),
        last_url=None if at_end else base + tail_query,
        raw_url=f"/repos/{repo.slug}/runs/{run.run_id}/raw?{tail_query}",
        tail_url=f"/repos/{repo.slug}/runs/{run.run_id}/log-tail?{tail_query}",
        live=running and at_end,
        running=running,
        logged_in=True,
    )


def _log_tail(repo: Repo, run_id: str) -> bottle.HTTPResponse:
    kind = kind_param(LOG_KINDS, "host")
    offset = int_param("offset", 0, 0, MAX_OFFSET)
    run, job = load_job(repo, run_id)
    running = job_running(repo, run, job)
    path = log_path(repo, run, job, kind)
    # whole lines while the job writes: an escape sequence is never cut between two chunks
    chunk = read_log_page(path, offset, TAIL_DEFAULT, align=False, hold_partial=running)
    if offset > chunk.size:
        raise ApiError(400, f"offset {offset} is past the end of the log ({chunk.size} bytes)")
    return _json(
        200,
        {
            "html": ansi_to_html(chunk.text),
            "next_offset": chunk.end,
            "eof": chunk.caught_up,
            "running": running,
        },
    )


def _raw_log(repo: Repo, run_id: str) -> bottle.HTTPResponse:
    return raw_log_response(repo, run_id, HEADERS)
