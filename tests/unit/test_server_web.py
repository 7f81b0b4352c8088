"""The web pages over WSGI: login and session cookie, run list, run page, log viewer, live tail."""

from __future__ import annotations

import re
import time
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import orjson
import pytest

from pikaci.model import JobRecord, PhaseTiming, PrepareTiming, RemoteLinuxVmExecution
from pikaci.server.access import (
    BundleFile,
)
from pikaci.server.app import make_app
from pikaci.server.auth import (
    LOGIN_FAILURES,
    SESSION_COOKIE,
    SESSION_SECONDS,
    TokenSet,
    WebAuth,
)
from pikaci.server.logs import (
    read_log_page,
    read_log_page_before,
)
from pikaci.server.web import LOG_PAGE
from pikaci.store import StateRoot
from tests.fixtures.serving import make_run, rid, wsgi_request
from tests.fixtures.support import REPO_ROOT

TOKEN = "web-token-one"
OTHER = "web-token-two"
TOKENS = TokenSet(tokens=(TOKEN.encode(), OTHER.encode()))
SLUG = "acme"
RUNS = f"/repos/{SLUG}/runs"


class Response:
    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = {name.lower(): value for name, value in headers}
        self.cookies = [value for name, value in headers if name.lower() == "set-cookie"]
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return orjson.loads(self.body)


def request(
    app: Any,
    path: str,
    query: str = "",
    cookie: Optional[str] = None,
    method: str = "GET",
    form: Optional[Dict[str, str]] = None,
    headers: Optional[Dict[str, str]] = None,
    remote_addr: str = "127.0.0.1",
) -> Response:
    sent = dict(headers or {})
    if cookie is not None:
        sent["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    data = b""
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    status, response_headers, parts = wsgi_request(
        app, path, query, method, sent, data, remote_addr=remote_addr
    )
    return Response(status, response_headers, b"".join(parts))


def login(app: Any, token: str = TOKEN, next_path: str = "/", **kwargs: Any) -> Response:
    form = {"token": token, "next": next_path}
    return request(app, "/login", method="POST", form=form, **kwargs)


def session_of(response: Response) -> str:
    (cookie,) = response.cookies
    return cookie.split(";", 1)[0].split("=", 1)[1]


@pytest.fixture
def app(state_root: StateRoot) -> Any:
    return make_app({SLUG: state_root}, TOKENS)


@pytest.fixture
def session(app: Any) -> str:
    return session_of(login(app))


class Tags(HTMLParser):
    """Counts open and close tags so a test can tell the page is balanced HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Dict[str, int] = {}
        self.closed: Dict[str, int] = {}
        self.scripts: List[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.opened[tag] = self.opened.get(tag, 0) + 1
        if tag == "script":
            self.scripts.append(dict(attrs).get("src") or "inline")

    def handle_endtag(self, tag: str) -> None:
        self.closed[tag] = self.closed.get(tag, 0) + 1


def parsed(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


# -- login and the session cookie -----------------------------------------------------------------


def test_pages_redirect_to_the_login_form_and_back(app, state_root):
    make_run(state_root, rid(1))
    page = request(app, f"{RUNS}/{rid(1)}", "x=1")
    assert page.status == 303
    location = page.headers["location"]
    assert location.startswith("/login?")
    target = urllib.parse.parse_qs(location.split("?", 1)[1])["next"][0]
    assert target == f"{RUNS}/{rid(1)}?x=1"
    form = request(app, "/login", f"next={urllib.parse.quote(target)}")
    assert form.status == 200 and 'type="password"' in form.text
    assert f'value="{RUNS}/{rid(1)}?x=1"' in form.text
    done = login(app, OTHER, target)
    assert done.status == 303 and done.headers["location"] == target
    assert request(app, target.split("?")[0], cookie=session_of(done)).status == 200


def test_the_session_cookie_is_secure_httponly_and_lax(app):
    response = login(app)
    (cookie,) = response.cookies
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "secure" in attributes and "httponly" in attributes
    assert "samesite=lax" in attributes and "path=/" in attributes
    assert f"max-age={SESSION_SECONDS}" in attributes
    assert TOKEN not in cookie  # a random session id, never the token


@pytest.mark.parametrize("token", ["", "nope", TOKEN + "x", TOKEN[:-1]])
def test_a_wrong_token_gets_the_form_again_and_no_cookie(app, token):
    response = login(app, token)
    assert response.status == 401 and response.cookies == []
    assert "That token is not valid." in response.text


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "javascript:x",
        "/\t/evil.example",  # browsers drop tabs and newlines: this would become //evil.example
        "/\n/evil.example",
        "/\r\n/evil.example",
        "/ok\\..\\x",
    ],
)
def test_login_never_redirects_off_the_server(app, target):
    assert login(app, TOKEN, target).headers["location"] == "/"
    cookie = session_of(login(app))
    form = request(app, "/login", urllib.parse.urlencode({"next": target}), cookie=cookie)
    assert form.status == 303 and form.headers["location"] == "/"


def test_forged_expired_and_revoked_sessions_are_refused(state_root):
    make_run(state_root, rid(1))
    auth = WebAuth(TOKENS)
    app = make_app({SLUG: state_root}, TOKENS, web_auth=auth)
    session = session_of(login(app))
    assert request(app, RUNS, cookie=session).status == 200
    for forged in (
        session[:-1] + ("A" if session[-1] != "A" else "B"),
        "",
        "garbage",
        f"{int(time.time()) + 60}.{'0' * 64}",  # the shape of a MAC cookie: means nothing here
        session + "\u00e9",  # not ASCII: refused, not a crash
        session * 3,
    ):
        assert request(app, RUNS, cookie=forged).status == 303, forged
    stale = auth.sessions.issue(time.time() - SESSION_SECONDS - 1)
    assert request(app, RUNS, cookie=stale).status == 303
    # a restarted server (a new app) knows no session: every cookie is void
    restarted = make_app({SLUG: state_root}, TokenSet(tokens=(OTHER.encode(),)))
    assert request(restarted, RUNS, cookie=session).status == 303


def test_logout_clears_the_cookie_and_ends_the_session_for_every_copy(app, state_root):
    make_run(state_root, rid(1))
    session = session_of(login(app))
    copy = str(session)
    response = request(app, "/logout", method="POST", cookie=session)
    assert response.status == 303 and response.headers["location"] == "/login"
    (cookie,) = response.cookies
    attributes = [part.strip() for part in cookie.split(";")]
    assert attributes[0] == f'{SESSION_COOKIE}=""'
    assert "expires=Thu, 01 Jan 1970 00:00:00 GMT" in attributes and "Path=/" in attributes
    assert request(app, RUNS, cookie=copy).status == 303  # revoked on the server


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/form"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1"},  # another port
    ],
)
def test_cross_site_login_and_logout_are_refused(app, state_root, headers):
    make_run(state_root, rid(1))
    refused = login(app, headers=headers)
    assert refused.status == 403 and refused.cookies == []
    session = session_of(login(app))
    assert request(app, "/logout", method="POST", cookie=session, headers=headers).status == 403
    assert request(app, RUNS, cookie=session).status == 200  # still logged in
    # what a browser sends from the pages' own form (they send no referrer: Origin is null)
    own_form = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    assert login(app, headers=own_form).status == 303
    assert login(app, headers={"Origin": "http://127.0.0.1", "Host": "127.0.0.1"}).status == 303


def test_failed_logins_are_limited_per_address(app):
    for _ in range(LOGIN_FAILURES):
        assert login(app, "wrong", remote_addr="192.0.2.7").status == 401
    blocked = login(app, remote_addr="192.0.2.7")  # even the right token waits now
    assert blocked.status == 429 and blocked.cookies == []
    assert 0 < int(blocked.headers["retry-after"]) <= 301
    assert login(app, remote_addr="192.0.2.8").status == 303  # another address is not


def test_bearer_tokens_do_not_open_pages_and_cookies_do_not_open_the_api(app, state_root, session):
    make_run(state_root, rid(1))
    status, headers, _ = wsgi_request(app, RUNS, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 303 and dict(headers)["Location"].startswith("/login?")
    api = request(app, f"/api/repos/{SLUG}/pikaci/runs", cookie=session)
    assert api.status == 401 and api.json() == {"error": "missing auth token"}


def test_without_auth_pages_open_directly(state_root):
    make_run(state_root, rid(1))
    open_app = make_app({SLUG: state_root}, TokenSet(disabled=True))
    assert request(open_app, RUNS).status == 200
    assert request(open_app, "/").headers["location"] == RUNS


def test_the_index_lists_repositories_when_there_are_several(state_root, tmp_path):
    two = make_app({"b-repo": state_root, "a-repo": StateRoot(tmp_path / "other")}, TOKENS)
    cookie = session_of(login(two))
    page = request(two, "/", cookie=cookie)
    assert page.status == 200
    assert page.text.index("/repos/a-repo/runs") < page.text.index("/repos/b-repo/runs")


# -- run list -------------------------------------------------------------------------------------


def test_run_list_shows_status_target_duration_and_age_newest_first(app, state_root, session):
    for n in range(1, 4):
        writer = make_run(
            state_root, rid(n), status="failed" if n == 2 else "passed", target=f"t{n}"
        )

        def finish(run: Any, n: int = n) -> None:
            run.finished_at = run.created_at.replace(":00.000000", f":{n * 7:02d}.500000")

        writer.update(finish)
    page = request(app, RUNS, cookie=session)
    assert page.status == 200
    order = re.findall(r'data-run="([^"]+)"', page.text)
    assert order == [rid(3), rid(2), rid(1)]
    row = page.text[page.text.index(f'data-run="{rid(2)}"') :]
    row = row[: row.index("</tr>")]
    assert "status-failed" in row and ">t2<" in row and "14.5 s" in row and "ago" in row


def test_run_list_filters_and_pages(app, state_root, session):
    for n in range(1, 61):
        make_run(state_root, rid(n), status="failed" if n % 3 == 0 else "passed")
    failed = request(app, RUNS, "status=failed", cookie=session)
    assert len(re.findall(r'data-run="', failed.text)) == 20
    assert '<option value="failed" selected>' in failed.text
    first = request(app, RUNS, cookie=session)
    assert len(re.findall(r'data-run="', first.text)) == 50
    more = re.search(r'rel="next" href="\?([^"]+)"', first.text)
    assert more is not None
    second = request(app, RUNS, more.group(1).replace("&amp;", "&"), cookie=session)
    shown = re.findall(r'data-run="([^"]+)"', second.text)
    assert shown == [rid(n) for n in range(10, 0, -1)]
    assert 'rel="next"' not in second.text
    bad = request(app, RUNS, "status=bogus", cookie=session)
    assert bad.status == 400 and "invalid status" in bad.text


def test_run_list_names_unreadable_runs_and_shows_the_rest(app, state_root, session):
    make_run(state_root, rid(1))
    make_run(state_root, rid(2))
    (state_root.runs_dir / rid(2) / "run.json").write_text("{ torn")
    page = request(app, RUNS, cookie=session)
    assert page.status == 200 and f'data-run="{rid(1)}"' in page.text
    assert f"unreadable: runs/{rid(2)}/run.json" in page.text


def test_a_running_record_whose_orchestrator_is_gone_is_shown_interrupted(app, state_root, session):
    make_run(state_root, rid(1), status="running")
    page = request(app, RUNS, cookie=session)
    assert "status-interrupted" in page.text and "http-equiv" not in page.text


# -- run page -------------------------------------------------------------------------------------


def rich_run(root: StateRoot, run_id: str) -> None:
    writer = make_run(root, run_id, jobs=("unit", "vm"), prepared=True)
    base = run_id[:4] + "-" + run_id[4:6] + "-" + run_id[6:8] + "T" + run_id[9:11] + ":00:"

    def enrich(run: Any) -> None:
        run.target_description = "the <b>demo</b> target"
        run.changed_files = ["src/lib.rs", "docs/<odd>.md"]
        run.filters = ["src/**"]
        run.finished_at = base + "30.000000+00:00"
        run.prepare_timings = [
            PrepareTiming(
                node_id="prepare-deps",
                started_at=base + "00.500000+00:00",
                finished_at=base + "04.000000+00:00",
                duration_ms=3500,
            )
        ]

    writer.update(enrich)
    writer.write_job(
        JobRecord(
            id="unit",
            description="unit tests",
            status="passed",
            placement="local",
            runtime="bubblewrap",
            started_at=base + "05.000000+00:00",
            finished_at=base + "12.000000+00:00",
            exit_code=0,
            message="<script>alert(1)</script>",
        )
    )
    phases = [
        PhaseTiming(
            phase=name,
            started_at=base + f"{s:02d}.000000+00:00",
            finished_at=base + f"{e:02d}.000000+00:00",
        )
        for name, s, e in (("prepare_runtime", 12, 20), ("guest_execute", 20, 28))
    ]
    writer.write_job(
        JobRecord(
            id="vm",
            status="failed",
            placement="remote_ssh",
            runtime="incus",
            started_at=base + "12.000000+00:00",
            finished_at=base + "29.000000+00:00",
            exit_code=3,
            remote_linux_vm_execution=RemoteLinuxVmExecution(phases=phases),
        )
    )


def test_run_page_shows_jobs_timeline_prepared_outputs_and_changed_files(app, state_root, session):
    rich_run(state_root, rid(1))
    page = request(app, f"{RUNS}/{rid(1)}", cookie=session)
    assert page.status == 200
    text = page.text
    assert re.findall(r'data-job="([^"]+)"', text) == ["unit", "vm"]
    assert "local + bubblewrap" in text and "remote_ssh + incus" in text
    assert "7.0 s" in text  # unit: 05 -> 12
    assert "status-failed" in text and ">3<" in text
    # the timeline: one row per prepare step, job and Incus phase
    rows = re.findall(r'data-row="([^"]+)"', text)
    assert rows == [
        "prepare:prepare-deps",
        "job:unit",
        "job:vm",
        "phase:vm:prepare_runtime",
        "phase:vm:guest_execute",
    ]
    assert "/nix/store/abc-deps" in text and "path:/x#ci.deps" in text
    assert "<code>src/lib.rs</code>" in text and "docs/&lt;odd&gt;.md" in text
    assert "Filters: src/**" in text
    # hostile text from records is escaped, never markup
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>demo</b>" not in text
    tags = parsed(text)
    assert tags.scripts == []  # the run page needs no script at all
    for tag in ("table", "tr", "td", "svg", "g", "dl", "ul"):
        assert tags.opened.get(tag) == tags.closed.get(tag), tag
    assert f"/repos/{SLUG}/runs/{rid(1)}/log?job=unit&amp;kind=host" in text


def test_run_page_errors_are_pages_with_the_right_status(app, state_root, session, tmp_path):
    make_run(state_root, rid(1))
    (state_root.runs_dir / rid(1) / "run.json").write_text("[]")
    assert request(app, f"{RUNS}/{rid(1)}", cookie=session).status == 404
    bad = request(app, f"{RUNS}/..%2Fetc", cookie=session)
    assert bad.status in (400, 404)
    invalid = request(app, f"{RUNS}/not-a-run", cookie=session)
    assert invalid.status == 400 and "invalid run id" in invalid.text
    assert invalid.headers["content-type"].startswith("text/html")
    missing_repo = request(app, "/repos/nope/runs", cookie=session)
    assert missing_repo.status == 404 and "unknown repository" in missing_repo.text
    nowhere = request(app, "/no/such/page", cookie=session)
    assert nowhere.status == 404 and nowhere.headers["content-type"].startswith("text/html")


def test_a_run_directory_symlinked_outside_the_root_is_not_shown(
    app, state_root, session, tmp_path
):
    outside = StateRoot(tmp_path / "outside")
    make_run(outside, rid(2))
    state_root.runs_dir.mkdir(parents=True, exist_ok=True)
    (state_root.runs_dir / rid(2)).symlink_to(outside.runs_dir / rid(2))
    assert request(app, f"{RUNS}/{rid(2)}", cookie=session).status == 404
    page = request(app, f"{RUNS}/{rid(2)}/log", "job=a&kind=host", cookie=session)
    assert page.status == 404 and "host of a" not in page.text


def test_every_page_carries_the_security_headers(app, state_root, session):
    make_run(state_root, rid(1))
    for path in (RUNS, f"{RUNS}/{rid(1)}", f"{RUNS}/{rid(1)}/log", "/login"):
        headers = request(app, path, cookie=session).headers
        assert "script-src" not in headers["content-security-policy"]
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"


# -- log viewer -----------------------------------------------------------------------------------


def write_log(root: StateRoot, run_id: str, lines: int, job: str = "a") -> bytes:
    data = "".join(f"line {n:06d} \x1b[32mok\x1b[0m\n" for n in range(lines)).encode()
    (root.job_dir(run_id, job) / "host.log").write_bytes(data)
    return data


def shown_lines(html: str) -> List[str]:
    body = html[html.index('<pre class="log"') :]
    body = body[body.index(">") + 1 : body.index("</pre>")]
    return re.findall(r"line (\d{6})", body)


def test_log_page_renders_ansi_colours_as_escaped_spans(app, state_root, session):
    make_run(state_root, rid(1))
    (state_root.job_dir(rid(1), "a") / "host.log").write_text(
        "plain <tag>\n\x1b[1;31mboom\x1b[0m done\x1b[K\n"
    )
    page = request(app, f"{RUNS}/{rid(1)}/log", "job=a&kind=host", cookie=session)
    assert page.status == 200
    assert "plain &lt;tag&gt;" in page.text
    assert re.search(
        r'<span class="[^"]*ansi-bold[^"]*ansi-fg-1[^"]*">boom</span> done', page.text
    ) or re.search(r'<span class="[^"]*ansi-fg-1[^"]*ansi-bold[^"]*">boom</span> done', page.text)
    assert "\x1b" not in page.text


def test_a_large_log_opens_at_its_end_and_pages_by_whole_lines(app, state_root, session):
    make_run(state_root, rid(1))
    data = write_log(state_root, rid(1), 40000)  # about 1 MiB: four pages and a bit
    assert len(data) > 3 * LOG_PAGE
    end = request(app, f"{RUNS}/{rid(1)}/log", "job=a&kind=host", cookie=session)
    lines = shown_lines(end.text)
    assert lines[-1] == "039999" and len(lines) < 40000
    assert 'rel="next"' not in end.text and 'rel="prev"' in end.text
    # from the start, following "Next" shows every line exactly once
    seen: List[str] = []
    query = "job=a&kind=host&offset=0"
    for _ in range(10):
        page = request(app, f"{RUNS}/{rid(1)}/log", query, cookie=session)
        seen += shown_lines(page.text)
        match = re.search(r'rel="next" href="[^"?]*\?([^"]+)"', page.text)
        if match is None:
            break
        query = match.group(1).replace("&amp;", "&")
    assert seen == [f"{n:06d}" for n in range(40000)]
    # "Previous" from the end page joins it without a gap or a repeat
    prev = re.search(r'rel="prev" href="[^"?]*\?([^"]+)"', end.text)
    assert prev is not None
    before = shown_lines(
        request(
            app, f"{RUNS}/{rid(1)}/log", prev.group(1).replace("&amp;", "&"), cookie=session
        ).text
    )
    assert int(before[-1]) + 1 == int(lines[0])


def test_an_offset_inside_a_line_starts_at_the_next_line(app, state_root, session):
    make_run(state_root, rid(1))
    write_log(state_root, rid(1), 100)
    page = request(app, f"{RUNS}/{rid(1)}/log", "job=a&kind=host&offset=5", cookie=session)
    assert shown_lines(page.text)[0] == "000001"
    past = request(app, f"{RUNS}/{rid(1)}/log", "job=a&kind=host&offset=999999999", cookie=session)
    assert past.status == 200 and shown_lines(past.text) == []


def test_log_page_switches_between_jobs_and_kinds_and_rejects_bad_ids(app, state_root, session):
    make_run(state_root, rid(1), jobs=("a", "b"))
    page = request(app, f"{RUNS}/{rid(1)}/log", "job=b&kind=guest", cookie=session)
    assert "guest of b" in page.text
    assert 'aria-current="page">b guest<' in page.text
    assert "kind=host" in page.text
    assert request(app, f"{RUNS}/{rid(1)}/log", "job=../a", cookie=session).status == 400
    assert request(app, f"{RUNS}/{rid(1)}/log", "job=zz", cookie=session).status == 404
    assert request(app, f"{RUNS}/{rid(1)}/log", "kind=both", cookie=session).status == 400


def test_a_finished_job_has_no_live_tail_script(app, state_root, session):
    make_run(state_root, rid(1))
    page = request(app, f"{RUNS}/{rid(1)}/log", "job=a", cookie=session)
    assert parsed(page.text).scripts == [] and 'data-live="0"' in page.text


def test_tail_fragment_returns_rendered_html_from_an_offset(app, state_root, session):
    make_run(state_root, rid(1))
    data = write_log(state_root, rid(1), 3)
    cut = data.index(b"line 000001")
    tail = request(
        app, f"{RUNS}/{rid(1)}/log-tail", f"job=a&kind=host&offset={cut}", cookie=session
    )
    body = tail.json()
    assert tail.status == 200 and body["next_offset"] == len(data) and body["eof"]
    assert body["running"] is False
    assert "line 000001" in body["html"] and "line 000000" not in body["html"]
    assert 'class="ansi-fg-2"' in body["html"]
    assert request(app, f"{RUNS}/{rid(1)}/log-tail", "job=a", cookie=None).status == 401
    past = request(app, f"{RUNS}/{rid(1)}/log-tail", "job=a&offset=99999", cookie=session)
    assert past.status == 400 and "past the end" in past.json()["error"]


def test_raw_log_downloads_the_whole_file(app, state_root, session):
    make_run(state_root, rid(1))
    data = write_log(state_root, rid(1), 50000)
    raw = request(app, f"{RUNS}/{rid(1)}/raw", "job=a&kind=host", cookie=session)
    assert raw.status == 200 and raw.body == data
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.headers["content-length"] == str(len(data))
    (state_root.job_dir(rid(1), "a") / "artifacts" / "guest.log").unlink()
    assert request(app, f"{RUNS}/{rid(1)}/raw", "job=a&kind=guest", cookie=session).status == 404


def test_static_assets_are_served_without_a_session_and_nothing_else_is(app):
    css = request(app, "/static/pikaci.css")
    assert css.status == 200 and css.headers["content-type"].startswith("text/css")
    assert css.body == (REPO_ROOT / "pikaci/server/static/pikaci.css").read_bytes()
    assert request(app, "/static/ansi.css").status == 200
    assert request(app, "/static/log.js").status == 200
    assert request(app, "/static/..%2Fweb.py").status in (403, 404)
    assert request(app, "/static/../web.py").status in (403, 404)


def test_a_log_recorded_outside_the_root_drops_its_link_not_the_page(app, state_root, session):
    writer = make_run(state_root, rid(1), jobs=("a", "b"))
    writer.write_job(JobRecord(id="b", status="passed", host_log_path="/etc/passwd"))
    page = request(app, f"{RUNS}/{rid(1)}", cookie=session)
    assert page.status == 200
    assert "job=b&amp;kind=guest" in page.text and "job=b&amp;kind=host" not in page.text
    assert "job=a&amp;kind=host" in page.text


def test_templates_are_compiled_once(app, state_root, session):
    import bottle

    make_run(state_root, rid(1))
    request(app, f"{RUNS}/{rid(1)}", cookie=session)
    compiled = len(bottle.TEMPLATES)
    for _ in range(20):
        assert request(app, f"{RUNS}/{rid(1)}", cookie=session).status == 200
        assert request(app, "/no/such/page", cookie=session).status == 404
    assert len(bottle.TEMPLATES) <= compiled + 1  # the error page, once


def test_oversized_numbers_are_a_400_not_a_crash(app, state_root, session):
    make_run(state_root, rid(1))
    huge = "9" * 5000
    page = request(app, f"{RUNS}/{rid(1)}/log", f"job=a&offset={huge}", cookie=session)
    assert page.status == 400 and "invalid offset" in page.text


# -- paging by whole lines, with lines longer than a page ------------------------------------------


def odd_log(tmp_path: Path) -> Tuple[BundleFile, bytes]:
    lines = [b"a" * 9, b"b" * 249, b"c" * 49, b"", b"d" * 120, b"e" * 3, b"f" * 301, b"g" * 7]
    data = b"\n".join(lines) + b"\nno newline at the end"
    path = tmp_path / "host.log"
    path.write_bytes(data)
    return BundleFile(tmp_path, path), data


@pytest.mark.parametrize("limit", [1, 7, 50, 100, 250, 301, 4096])
def test_next_pages_show_every_byte_once_whatever_the_line_lengths(tmp_path, limit):
    path, data = odd_log(tmp_path)
    shown, offset, align = [], 0, True
    for _ in range(len(data) + 2):
        page = read_log_page(path, offset, limit, align=align)
        shown.append(page.text)
        assert page.start == offset and page.end > page.start  # always progress
        if page.end >= page.size:
            break
        offset, align = page.end, False  # what a Next link does (cont=1)
    assert "".join(shown).encode() == data


@pytest.mark.parametrize("limit", [1, 7, 50, 100, 250, 301, 4096])
def test_previous_pages_walk_back_to_the_start_without_a_gap(tmp_path, limit):
    path, data = odd_log(tmp_path)
    pages, end = [], len(data)
    for _ in range(len(data) + 2):
        page = read_log_page_before(path, end, limit)
        assert page.end == end and page.start < end  # never an empty page, never stuck
        pages.append(page.text)
        if page.start == 0:
            break
        end = page.start
    assert "".join(reversed(pages)).encode() == data


def test_a_page_asked_to_start_inside_a_line_starts_at_the_next_line(tmp_path):
    path, data = odd_log(tmp_path)
    page = read_log_page(path, 3, 400)
    assert page.start == 10 and page.text.startswith("b" * 249 + "\n")
    # inside a line longer than the page: the cut line is shown rather than nothing
    inside_long = read_log_page(path, data.index(b"f") + 5, 50)
    assert inside_long.text == "f" * 50


def test_a_live_tail_holds_back_a_line_still_being_written(tmp_path):
    path = BundleFile(tmp_path, tmp_path / "host.log")
    path.path.write_bytes(b"one\n\x1b[31mred\x1b[0m\nhalf a line \x1b[3")
    page = read_log_page(path, 0, 4096, align=False, hold_partial=True)
    assert page.text == "one\n\x1b[31mred\x1b[0m\n" and page.caught_up
    assert page.end == len(b"one\n\x1b[31mred\x1b[0m\n")
    only_partial = read_log_page(path, page.end, 4096, align=False, hold_partial=True)
    assert only_partial.text == "" and only_partial.end == page.end and only_partial.caught_up
    done = read_log_page(path, page.end, 4096, align=False, hold_partial=False)
    assert done.text == "half a line \x1b[3" and done.caught_up
    # a chunk that stops before the end is not caught up: the client asks again at once
    first = read_log_page(path, 0, 6, align=False, hold_partial=True)
    assert first.text == "one\n" and not first.caught_up
