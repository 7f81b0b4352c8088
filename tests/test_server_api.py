"""The run-bundle server's JSON API: endpoints, auth, confinement to the state root, `serve`."""

from __future__ import annotations

import http.client
import io
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import orjson
import pytest
import waitress

from pikaci.model import JobRecord, PreparedOutputsRecord
from pikaci.server.access import TAIL_MAX
from pikaci.server.app import make_app
from pikaci.server.auth import (
    INVALID_TOKEN,
    MISSING_TOKEN,
    AuthConfigError,
    TokenSet,
    parse_tokens_file,
    tokens_from_environment,
)
from pikaci.server.serve import access_log, is_loopback, parse_repo_specs, slugify
from pikaci.store import RunWriter, StateRoot
from tests.conftest import DOIT, REPO_ROOT, LaneSpec, new_repository, render_dodo
from tests.serving import make_run, rid, wsgi_request
from tests.serving import start_serve as serve_in

TOKEN = "s3cret-token-one"
OTHER = "second-token-two"
TOKENS = TokenSet(tokens=(TOKEN.encode(), OTHER.encode()))
SLUG = "acme-widgets"
BASE = f"/api/repos/{SLUG}/pikaci"


# -- a small WSGI client: PATH_INFO arrives decoded, exactly as a server hands it over ---------


def call(
    app: Any,
    path: str,
    query: str = "",
    token: Optional[str] = TOKEN,
    authorization: Optional[str] = None,
    method: str = "GET",
) -> Tuple[int, Dict[str, str], Any]:
    headers: Dict[str, str] = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, response_headers, parts = wsgi_request(app, path, query, method, headers)
    seen = {"status": status, "headers": {name.lower(): value for name, value in response_headers}}
    body = b"".join(parts)
    assert seen["headers"]["content-type"].startswith("application/json")
    return seen["status"], seen["headers"], orjson.loads(body)


def get(app: Any, path: str, query: str = "", **kwargs: Any) -> Tuple[int, Any]:
    status, _, body = call(app, path, query, **kwargs)
    return status, body


# -- crafted state roots ------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> StateRoot:
    return StateRoot(tmp_path / "state")


@pytest.fixture
def app(root: StateRoot) -> Any:
    return make_app({SLUG: root}, TOKENS)


# -- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, MISSING_TOKEN),
        ("", MISSING_TOKEN),
        ("Bearer", MISSING_TOKEN),
        ("Bearer   ", MISSING_TOKEN),
        (f"Basic {TOKEN}", MISSING_TOKEN),
        (TOKEN, MISSING_TOKEN),
        ("Bearer wrong", INVALID_TOKEN),
        (f"Bearer {TOKEN}x", INVALID_TOKEN),
        (f"Bearer {TOKEN[:-1]}", INVALID_TOKEN),
        ("Bearer ünïcode", INVALID_TOKEN),
    ],
)
def test_every_route_requires_a_valid_bearer_token(app, root, authorization, message):
    make_run(root, rid(1))
    for path in (
        "/api/repos",
        f"{BASE}/runs",
        f"{BASE}/run/{rid(1)}",
        f"{BASE}/logs/{rid(1)}",
        f"{BASE}/tail/{rid(1)}",
        f"{BASE}/raw-log/{rid(1)}",
        f"{BASE}/bundle/{rid(1)}",
        f"{BASE}/prepared-outputs/{rid(1)}",
        f"{BASE}/run/..",
        "/api/repos/nope/pikaci/runs",
    ):
        kwargs: Dict[str, Any] = {"token": None}
        if authorization is not None:
            kwargs["authorization"] = authorization.encode().decode("latin-1")
        status, headers, body = call(app, path, **kwargs)
        assert (status, body) == (401, {"error": message}), path
        assert headers["www-authenticate"] == "Bearer"


def test_any_configured_token_is_accepted_and_the_scheme_is_case_insensitive(app):
    assert get(app, "/api/repos", token=OTHER) == (200, {"repos": [SLUG]})
    assert get(app, "/api/repos", authorization=f"bearer {TOKEN}")[0] == 200


def test_disabled_auth_lets_requests_through(root):
    open_app = make_app({SLUG: root}, TokenSet(disabled=True))
    assert get(open_app, "/api/repos", token=None) == (200, {"repos": [SLUG]})


def test_an_empty_token_set_accepts_nothing(root):
    closed = make_app({SLUG: root}, TokenSet())
    assert get(closed, "/api/repos", token="")[0] == 401
    assert get(closed, "/api/repos") == (401, {"error": INVALID_TOKEN})


def test_tokens_from_file_and_environment(tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# ops team\nalpha-token  # rotated 2026-01\n\n  beta-token\n#gamma\n")
    assert parse_tokens_file(tokens_file.read_text()) == ["alpha-token", "beta-token"]
    tokens = tokens_from_environment(
        {"PIKACI_SERVER_TOKENS_FILE": str(tokens_file), "PIKACI_SERVER_TOKENS": " c1 ,,c2,"}
    )
    assert tokens.tokens == (b"alpha-token", b"beta-token", b"c1", b"c2")
    assert tokens.check("Bearer c2") is None
    assert tokens.check("Bearer gamma") == INVALID_TOKEN
    with pytest.raises(AuthConfigError, match="no server tokens configured"):
        tokens_from_environment({})
    with pytest.raises(AuthConfigError, match="no server tokens configured"):
        tokens_from_environment({"PIKACI_SERVER_TOKENS": " , "})
    with pytest.raises(AuthConfigError, match="unreadable"):
        tokens_from_environment({"PIKACI_SERVER_TOKENS_FILE": str(tmp_path / "absent")})


# -- routing and error shapes --------------------------------------------------------------------


def test_unknown_repository_route_and_method_are_json_errors(app):
    assert get(app, "/api/repos/other/pikaci/runs") == (
        404,
        {"error": "unknown repository `other`"},
    )
    status, body = get(app, "/api/nothing/here")
    assert status == 404 and body == {"error": "not found"}
    status, headers, body = call(app, "/api/nothing/here", token="wrong")
    assert (status, body) == (401, {"error": INVALID_TOKEN})
    assert headers["www-authenticate"] == "Bearer"
    status, body = get(app, f"{BASE}/runs", method="POST")
    assert status == 405 and "error" in body


def test_an_unexpected_failure_is_a_json_500(app, root, monkeypatch):
    make_run(root, rid(1))

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire at /secret/place")

    monkeypatch.setattr("pikaci.server.api.load_logs_metadata", explode)
    status, body = get(app, f"{BASE}/bundle/{rid(1)}")
    assert (status, body) == (500, {"error": "internal server error"})


def test_run_record_and_missing_or_invalid_runs(app, root):
    make_run(root, rid(1), jobs=("a", "b"))
    status, body = get(app, f"{BASE}/run/{rid(1)}")
    assert status == 200
    assert body == orjson.loads((root.runs_dir / rid(1) / "run.json").read_bytes())
    assert [job["id"] for job in body["jobs"]] == ["a", "b"]
    status, body = get(app, f"{BASE}/run/{rid(2)}")
    assert (status, body) == (404, {"error": f"run `{rid(2)}` not found"})
    for bad in (
        "..",
        "...",
        "x",
        rid(1) + "\n",
        "20260101T000000Z-0000000A",
        "20260101T000000Z-0000000g",
        "2026-01-01",
    ):
        status, body = get(app, f"{BASE}/run/{bad}")
        assert status == 400 and body["error"].startswith("invalid run id"), bad


def test_corrupt_run_json_is_a_404_and_a_problem_while_the_list_still_works(app, root):
    make_run(root, rid(1))
    make_run(root, rid(2))
    make_run(root, rid(3))
    (root.runs_dir / rid(2) / "run.json").write_text('{"run_id": "trunc')
    (root.runs_dir / "20260101T000000Z-deadbeef").mkdir()  # a directory without a record
    (root.runs_dir / "notes").mkdir()
    status, body = get(app, f"{BASE}/run/{rid(2)}")
    assert status == 404 and "invalid JSON" in body["error"]
    assert str(root.root) not in body["error"]
    for endpoint in ("bundle", "logs", "tail", "prepared-outputs"):
        assert get(app, f"{BASE}/{endpoint}/{rid(2)}")[0] == 404
    status, body = get(app, f"{BASE}/runs")
    assert status == 200
    assert [run["run_id"] for run in body["runs"]] == [rid(3), rid(1)]
    problems = body["problems"]
    assert len(problems) == 3
    assert any(p.startswith(f"runs/{rid(2)}/run.json") and "invalid JSON" in p for p in problems)
    assert (
        "runs/20260101T000000Z-deadbeef/run.json: missing (run directory without a record)"
        in problems
    )
    assert "runs/notes: not a run id" in problems


def test_a_record_naming_another_run_is_a_problem(app, root):
    make_run(root, rid(1))
    make_run(root, rid(2))
    record = orjson.loads((root.runs_dir / rid(2) / "run.json").read_bytes())
    record["run_id"] = rid(1)
    (root.runs_dir / rid(2) / "run.json").write_bytes(orjson.dumps(record))
    body = get(app, f"{BASE}/runs")[1]
    assert [run["run_id"] for run in body["runs"]] == [rid(1)]
    assert body["problems"] == [f"runs/{rid(2)}/run.json: records run id {rid(1)!r}"]


# -- prepared outputs and bundles ----------------------------------------------------------------


def test_prepared_outputs_present_absent_and_corrupt(app, root):
    make_run(root, rid(1), prepared=True)
    make_run(root, rid(2))
    make_run(root, rid(3), prepared=True)
    (root.runs_dir / rid(3) / "prepared-outputs.json").write_text("[1, 2")
    status, body = get(app, f"{BASE}/prepared-outputs/{rid(1)}")
    assert status == 200 and body["run_id"] == rid(1)
    assert body["prepared_outputs"]["schema_version"] == 1
    assert body["prepared_outputs"]["outputs"][0]["node_id"] == "prepare-deps"
    for run_id in (rid(2), rid(3)):
        assert get(app, f"{BASE}/prepared-outputs/{run_id}") == (
            404,
            {"error": f"prepared outputs not found for run `{run_id}`"},
        )
    assert get(app, f"{BASE}/prepared-outputs/{rid(9)}") == (
        404,
        {"error": f"run `{rid(9)}` not found"},
    )


def test_bundle_keeps_the_run_when_prepared_outputs_are_corrupt(app, root):
    make_run(root, rid(1), prepared=True, jobs=("a", "b"))
    status, body = get(app, f"{BASE}/bundle/{rid(1)}")
    assert status == 200 and set(body) == {"run", "logs", "prepared_outputs"}
    assert body["prepared_outputs"]["outputs"][0]["realized_path"] == "/nix/store/abc-deps"
    (root.runs_dir / rid(1) / "prepared-outputs.json").write_text(
        '{"schema_version": 1, "outputs": 7}'
    )
    status, body = get(app, f"{BASE}/bundle/{rid(1)}")
    assert status == 200 and body["prepared_outputs"] is None
    assert body["run"]["run_id"] == rid(1)
    assert body["logs"]["run_id"] == rid(1) and body["logs"]["status"] == "passed"
    assert [
        (j["id"], j["host_log_exists"], j["guest_log_exists"]) for j in body["logs"]["jobs"]
    ] == [
        ("a", True, True),
        ("b", True, True),
    ]
    (root.job_dir(rid(1), "b") / "host.log").unlink()
    body = get(app, f"{BASE}/bundle/{rid(1)}")[1]
    assert [j["host_log_exists"] for j in body["logs"]["jobs"]] == [True, False]


def test_prepared_outputs_recorded_outside_the_state_root_are_never_read(app, root, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(orjson.dumps(PreparedOutputsRecord().to_dict()))
    writer = make_run(root, rid(1))
    writer.update(lambda run: setattr(run, "prepared_outputs_path", str(outside)))
    assert get(app, f"{BASE}/prepared-outputs/{rid(1)}")[0] == 404
    assert get(app, f"{BASE}/bundle/{rid(1)}")[1]["prepared_outputs"] is None


# -- logs ----------------------------------------------------------------------------------------


def test_logs_by_job_and_kind(app, root):
    make_run(root, rid(1), jobs=("a", "b"))
    assert get(app, f"{BASE}/logs/{rid(1)}") == (
        200,
        {"run_id": rid(1), "job": "a", "host": "host of a\n", "guest": "guest of a\n"},
    )
    assert get(app, f"{BASE}/logs/{rid(1)}", "job=b&kind=host")[1] == {
        "run_id": rid(1),
        "job": "b",
        "host": "host of b\n",
        "guest": None,
    }
    assert get(app, f"{BASE}/logs/{rid(1)}", "job=b&kind=guest")[1]["host"] is None
    (root.job_dir(rid(1), "b") / "artifacts" / "guest.log").unlink()
    assert get(app, f"{BASE}/logs/{rid(1)}", "job=b")[1]["guest"] is None  # never created
    assert get(app, f"{BASE}/logs/{rid(1)}", "job=zzz") == (
        404,
        {"error": f"run `{rid(1)}` has no job `zzz`"},
    )
    status, body = get(app, f"{BASE}/logs/{rid(1)}", "job=..%2F..%2Fetc")
    assert status == 400 and body["error"].startswith("invalid job id")
    status, body = get(app, f"{BASE}/logs/{rid(1)}", "kind=all")
    assert status == 400 and body["error"] == "invalid kind 'all': expected host|guest|both"
    make_run(root, rid(2), jobs=())
    assert get(app, f"{BASE}/logs/{rid(2)}") == (404, {"error": f"run `{rid(2)}` has no jobs"})
    # ids are checked before the disk: a bad job id of an absent run is still a 400
    assert get(app, f"{BASE}/logs/{rid(9)}", "job=..")[0] == 400
    assert get(app, f"{BASE}/tail/{rid(9)}", "job=a/b")[0] == 400


def test_raw_log_streams_the_whole_log_as_text(app, root):
    make_run(root, rid(1))
    data = b"".join(b"line %06d \xc3\xa9\n" % n for n in range(200000))  # several chunks
    (root.job_dir(rid(1), "a") / "host.log").write_bytes(data)
    status, headers, parts = wsgi_request(
        app,
        f"{BASE}/raw-log/{rid(1)}",
        "job=a&kind=host",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    seen = {"status": str(status), "headers": dict(headers)}
    assert seen["status"].startswith("200")
    assert seen["headers"]["Content-Type"] == "text/plain; charset=utf-8"
    assert seen["headers"]["Content-Length"] == str(len(data))
    assert b"".join(parts) == data and len(parts) > 1  # streamed, never one buffer
    assert get(app, f"{BASE}/raw-log/{rid(1)}", "kind=both")[0] == 400
    (root.job_dir(rid(1), "a") / "artifacts" / "guest.log").unlink()
    status, body = get(app, f"{BASE}/raw-log/{rid(1)}", "kind=guest")
    assert (status, body) == (404, {"error": "job `a` has no guest log"})


def test_an_unreadable_log_is_a_404(app, root):
    make_run(root, rid(1))
    host = root.job_dir(rid(1), "a") / "host.log"
    host.unlink()
    host.mkdir()  # opening a directory fails with something other than "not found"
    status, body = get(app, f"{BASE}/logs/{rid(1)}", "kind=host")
    assert status == 404 and body["error"].startswith("cannot read host.log")
    guest = root.job_dir(rid(1), "a") / "artifacts" / "guest.log"
    guest.unlink()
    os.mkfifo(guest)  # nobody writes to it: opening it must not hang the request
    for endpoint, query in (
        ("logs", "kind=guest"),
        ("tail", "kind=guest"),
        ("raw-log", "kind=guest"),
    ):
        status, body = get(app, f"{BASE}/{endpoint}/{rid(1)}", query)
        assert (status, body) == (404, {"error": "cannot read guest.log: not a regular file"})


def test_symlinks_and_recorded_paths_leading_outside_the_root_are_refused(app, root, tmp_path):
    secret_dir = tmp_path / "secret"
    (secret_dir / "artifacts").mkdir(parents=True)
    (secret_dir / "host.log").write_text("TOP SECRET\n")
    (secret_dir / "artifacts" / "guest.log").write_text("TOP SECRET\n")
    make_run(root, rid(1), jobs=("a", "b"))
    job_b = root.job_dir(rid(1), "b")
    for child in sorted(job_b.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    job_b.rmdir()
    job_b.symlink_to(secret_dir)
    for query in ("job=b", "job=b&kind=host", "job=b&kind=guest"):
        status, body = get(app, f"{BASE}/logs/{rid(1)}", query)
        assert status == 404 and "outside the state root" in body["error"], query
        assert "SECRET" not in str(body)
    assert get(app, f"{BASE}/tail/{rid(1)}", "job=b")[0] == 404
    assert get(app, f"{BASE}/raw-log/{rid(1)}", "job=b")[0] == 404
    jobs = get(app, f"{BASE}/bundle/{rid(1)}")[1]["logs"]["jobs"]
    assert [(j["host_log_exists"], j["guest_log_exists"]) for j in jobs] == [
        (True, True),
        (False, False),
    ]
    # a record that names a log outside the root, as an absolute path
    writer = RunWriter(root.run_dir(rid(1)))
    writer.write_job(JobRecord(id="a", status="passed", host_log_path="/etc/passwd"))
    status, body = get(app, f"{BASE}/logs/{rid(1)}", "job=a&kind=host")
    assert status == 404 and "outside the state root" in body["error"]


def test_a_run_directory_symlinked_outside_the_root_is_refused(app, root, tmp_path):
    make_run(root, rid(1))
    elsewhere = StateRoot(tmp_path / "other")
    make_run(elsewhere, rid(2))
    (root.runs_dir / rid(2)).symlink_to(elsewhere.runs_dir / rid(2))
    status, body = get(app, f"{BASE}/run/{rid(2)}")
    assert status == 404 and "outside the state root" in body["error"]
    body = get(app, f"{BASE}/runs")[1]
    assert [run["run_id"] for run in body["runs"]] == [rid(1)]
    assert body["problems"] == [f"runs/{rid(2)}: outside the state root"]
    # run.json itself as a symlink out of the root
    (root.runs_dir / rid(1) / "run.json").unlink()
    (root.runs_dir / rid(1) / "run.json").symlink_to(elsewhere.runs_dir / rid(2) / "run.json")
    assert get(app, f"{BASE}/run/{rid(1)}") == (404, {"error": f"run `{rid(1)}` not found"})


def test_a_state_root_reached_through_a_symlink_still_serves(tmp_path):
    real = StateRoot(tmp_path / "real")
    make_run(real, rid(1))
    (tmp_path / "link").symlink_to(tmp_path / "real")
    linked_app = make_app({SLUG: StateRoot(tmp_path / "link")}, TOKENS)
    assert get(linked_app, f"{BASE}/logs/{rid(1)}")[1]["host"] == "host of a\n"


# -- listing -------------------------------------------------------------------------------------


def test_paging_is_newest_first_with_a_stable_cursor(app, root):
    for n in range(7):
        make_run(
            root,
            rid(n),
            status="failed" if n % 3 == 0 else "passed",
            target="web" if n % 2 else "main",
        )
    seen = []
    cursor = ""
    pages = 0
    while True:
        status, body = get(app, f"{BASE}/runs", f"limit=3&cursor={cursor}")
        assert status == 200 and body["repo"] == SLUG and len(body["runs"]) <= 3
        seen += [run["run_id"] for run in body["runs"]]
        pages += 1
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
        if pages == 1:
            make_run(root, rid(40))  # a run appearing between pages neither shifts nor repeats
    assert seen == [rid(n) for n in reversed(range(7))]
    assert pages == 3
    body = get(app, f"{BASE}/runs")[1]
    assert [run["run_id"] for run in body["runs"]][:2] == [rid(40), rid(6)]
    assert body["next_cursor"] is None and body["problems"] == []
    failed = get(app, f"{BASE}/runs", "status=failed")[1]["runs"]
    assert [run["run_id"] for run in failed] == [rid(6), rid(3), rid(0)]
    web_passed = get(app, f"{BASE}/runs", "status=passed&target=web")[1]["runs"]
    assert [run["run_id"] for run in web_passed] == [rid(5), rid(1)]
    first = get(app, f"{BASE}/runs", "status=failed&limit=2")[1]
    rest = get(app, f"{BASE}/runs", f"status=failed&limit=2&cursor={first['next_cursor']}")[1]
    assert [run["run_id"] for run in rest["runs"]] == [rid(0)] and rest["next_cursor"] is None
    assert get(app, f"{BASE}/runs", "target=nope")[1]["runs"] == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "invalid limit '0'"),
        ("limit=201", "invalid limit '201'"),
        ("limit=-1", "invalid limit '-1'"),
        ("limit=abc", "invalid limit 'abc'"),
        ("status=exploded", "invalid status 'exploded'"),
        ("cursor=!!!", "invalid cursor"),
        ("cursor=e30", "invalid cursor"),  # `{}`
        ("cursor=WyJ4IiwieSJd", "invalid cursor"),  # ["x","y"]
    ],
)
def test_bad_list_parameters_are_400(app, root, query, message):
    make_run(root, rid(1))
    status, body = get(app, f"{BASE}/runs", query)
    assert status == 400 and body["error"].startswith(message)


def test_an_empty_or_absent_state_root_lists_nothing(app):
    assert get(app, f"{BASE}/runs") == (
        200,
        {"repo": SLUG, "runs": [], "next_cursor": None, "problems": []},
    )


def test_each_repository_slug_serves_its_own_root(tmp_path):
    one, two = StateRoot(tmp_path / "one"), StateRoot(tmp_path / "two")
    make_run(one, rid(1))
    make_run(two, rid(2))
    multi = make_app({"owner-one": one, "owner-two": two}, TOKENS)
    assert get(multi, "/api/repos")[1] == {"repos": ["owner-one", "owner-two"]}
    assert [r["run_id"] for r in get(multi, "/api/repos/owner-one/pikaci/runs")[1]["runs"]] == [
        rid(1)
    ]
    assert [r["run_id"] for r in get(multi, "/api/repos/owner-two/pikaci/runs")[1]["runs"]] == [
        rid(2)
    ]
    assert get(multi, f"/api/repos/owner-one/pikaci/run/{rid(2)}")[0] == 404
    assert get(multi, f"/api/repos/owner-two/pikaci/run/{rid(2)}")[0] == 200


# -- live tail -----------------------------------------------------------------------------------


def test_tail_follows_a_growing_log_by_byte_offset(app, root):
    writer = make_run(root, rid(1), status="running", jobs=("a",))
    host = root.job_dir(rid(1), "a") / "host.log"
    host.write_bytes(b"")
    with writer.active():
        first = get(app, f"{BASE}/tail/{rid(1)}", "job=a")[1]
        assert first == {
            "run_id": rid(1),
            "job": "a",
            "kind": "host",
            "offset": 0,
            "data": "",
            "next_offset": 0,
            "eof": True,
            "running": True,
        }
        with open(host, "ab") as handle:
            handle.write(b"line one\n")
        second = get(app, f"{BASE}/tail/{rid(1)}", "job=a&offset=0")[1]
        assert (second["data"], second["next_offset"], second["eof"]) == ("line one\n", 9, True)
        with open(host, "ab") as handle:
            handle.write("zwei \u00e9\u00e9\n".encode())
        third = get(app, f"{BASE}/tail/{rid(1)}", f"offset={second['next_offset']}&limit=6")[1]
        # 6 bytes would split the first `é`: the cut sequence waits for the next call
        assert (third["data"], third["next_offset"], third["eof"]) == ("zwei ", 14, False)
        fourth = get(app, f"{BASE}/tail/{rid(1)}", f"offset={third['next_offset']}")[1]
        assert (fourth["data"], fourth["eof"]) == ("\u00e9\u00e9\n", True)
        assert fourth["next_offset"] == host.stat().st_size
    writer.write_job(JobRecord(id="a", status="passed"))
    writer.update(lambda run: setattr(run, "status", "passed"))
    done = get(app, f"{BASE}/tail/{rid(1)}", f"offset={fourth['next_offset']}")[1]
    assert (done["data"], done["eof"], done["running"]) == ("", True, False)


def test_tail_of_a_running_job_whose_orchestrator_died_is_not_running(app, root):
    make_run(root, rid(1), status="running")
    assert get(app, f"{BASE}/tail/{rid(1)}")[1]["running"] is False


def test_tail_chunks_are_bounded_and_errors_are_400(app, root):
    make_run(root, rid(1))
    guest = root.job_dir(rid(1), "a") / "artifacts" / "guest.log"
    guest.write_bytes(b"x" * (TAIL_MAX + 10))
    body = get(app, f"{BASE}/tail/{rid(1)}", f"kind=guest&limit={TAIL_MAX}")[1]
    assert len(body["data"]) == TAIL_MAX and body["next_offset"] == TAIL_MAX and not body["eof"]
    body = get(app, f"{BASE}/tail/{rid(1)}", f"kind=guest&offset={TAIL_MAX}")[1]
    assert body["data"] == "x" * 10 and body["eof"]
    assert get(app, f"{BASE}/tail/{rid(1)}", f"kind=guest&limit={TAIL_MAX + 1}")[0] == 400
    assert get(app, f"{BASE}/tail/{rid(1)}", "kind=both")[0] == 400
    status, body = get(app, f"{BASE}/tail/{rid(1)}", "offset=999999999")
    assert status == 400 and "past the end" in body["error"]
    assert get(app, f"{BASE}/tail/{rid(1)}", "offset=-5")[0] == 400
    assert get(app, f"{BASE}/tail/{rid(1)}", "job=zzz")[0] == 404
    (root.job_dir(rid(1), "a") / "host.log").unlink()
    assert get(app, f"{BASE}/tail/{rid(1)}")[1]["data"] == ""  # not written yet


# -- over a real HTTP server: what clients actually send ---------------------------------------------


@contextmanager
def served(app: Any) -> Iterator[int]:
    log = io.StringIO()
    server = waitress.create_server(access_log(app, log), host="127.0.0.1", port=0, threads=2)
    stopping = threading.Event()

    def loop() -> None:
        try:
            server.run()
        except OSError:
            if not stopping.is_set():  # closing the sockets under the loop ends it this way
                raise

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        stopping.set()
        server.close()
        thread.join(timeout=10)


def raw_get(port: int, target: str, token: Optional[str] = TOKEN) -> Tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # skip_host + putrequest send the target byte for byte, without normalising it
        connection.putrequest("GET", target, skip_accept_encoding=True)
        if token is not None:
            connection.putheader("Authorization", f"Bearer {token}")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    "target",
    [
        f"{BASE}/run/..",
        f"{BASE}/run/%2e%2e",
        f"{BASE}/run/%2E%2E",
        f"{BASE}/run/..%2F..%2F..%2Fetc%2Fpasswd",
        f"{BASE}/run/../../../../etc/passwd",
        f"{BASE}/run/%2Fetc%2Fpasswd",
        f"{BASE}/run//etc/passwd",
        f"{BASE}/logs/{rid(1)}?job=..%2F..%2F..",
        f"{BASE}/logs/{rid(1)}?job=%2Fetc%2Fpasswd",
        f"{BASE}/logs/{rid(1)}?job=%2e%2e",
        f"{BASE}/tail/{rid(1)}?job=/etc/passwd",
        f"{BASE}/raw-log/{rid(1)}?job=..%2F..&kind=host",
        f"{BASE}/logs/{rid(1)}%2F..%2F..",
        "/api/repos/..%2F..%2F/pikaci/runs",
        f"/api/repos/%2e%2e/pikaci/run/{rid(1)}",
    ],
)
def test_traversal_attempts_over_http_are_json_errors(root, target):
    make_run(root, rid(1))
    with served(make_app({SLUG: root}, TOKENS)) as port:
        status, body = raw_get(port, target)
        assert status in (400, 404) and set(body) == {"error"}, target
        assert "root:" not in str(body)
        assert raw_get(port, target, token=None) == (401, {"error": MISSING_TOKEN})
        assert raw_get(port, f"{BASE}/run/{rid(1)}")[0] == 200


def test_access_log_has_one_line_per_request_without_the_query(root):
    log = io.StringIO()
    logged = access_log(make_app({SLUG: root}, TOKENS), log)
    call(logged, f"{BASE}/runs", "limit=5&token=hunter2")
    call(logged, "/api/repos", token=None)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"GET {BASE}/runs 200 ") and lines[0].endswith("ms")
    assert lines[1].startswith("GET /api/repos 401 ")
    assert "hunter2" not in log.getvalue()


def test_serve_helpers():
    assert slugify("sledtools/pika") == "sledtools-pika"
    assert slugify("my.repo name") == "my-repo-name"
    assert parse_repo_specs(["a=/x", "b_2=rel"]) == {"a": "/x", "b_2": "rel"}
    for bad in (["noequals"], ["a/b=/x"], ["a=/x", "a=/y"], ["=/x"], ["a="]):
        with pytest.raises(Exception, match="--repo"):
            parse_repo_specs(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("::")


# -- real runs, and the `pikaci serve` command ---------------------------------------------------


@pytest.fixture(scope="module")
def real_project(tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    project = new_repository(
        base / "my.repo",
        base / "state",
        {
            "dodo.py": render_dodo(
                [
                    LaneSpec("a", 'echo alpha-out; echo guest-side > "$ARTIFACTS/guest.log"'),
                    LaneSpec("b", "echo beta-out; exit 3"),
                ]
            )
        },
    )
    result = project.doit("run", "--continue", "target:main")
    assert result.returncode != 0, result.stdout + result.stderr
    return project


@pytest.mark.slow
def test_real_run_bundle_over_the_api(real_project):
    project = real_project
    app = make_app({SLUG: StateRoot(project.state_root)}, TOKENS)
    (run_id,) = project.run_ids()
    listing = get(app, f"{BASE}/runs")[1]
    assert [run["run_id"] for run in listing["runs"]] == [run_id]
    assert listing["runs"][0]["status"] == "failed" and listing["problems"] == []
    run = get(app, f"{BASE}/run/{run_id}")[1]
    assert run == project.run_record(run_id)
    assert {job["id"]: job["status"] for job in run["jobs"]} == {"a": "passed", "b": "failed"}
    logs = get(app, f"{BASE}/logs/{run_id}", "job=a")[1]
    assert "alpha-out" in logs["host"] and logs["guest"] == "guest-side\n"
    logs_b = get(app, f"{BASE}/logs/{run_id}", "job=b&kind=host")[1]
    assert "beta-out" in logs_b["host"] and logs_b["guest"] is None
    bundle = get(app, f"{BASE}/bundle/{run_id}")[1]
    assert bundle["run"] == run
    assert {job["id"] for job in bundle["logs"]["jobs"]} == {"a", "b"}
    assert all(job["host_log_exists"] for job in bundle["logs"]["jobs"])
    tail = get(app, f"{BASE}/tail/{run_id}", "job=b&limit=4")[1]
    assert tail["next_offset"] == 4 and not tail["eof"] and tail["running"] is False
    # every run writes its prepared-outputs record, empty for host-process lanes
    assert get(app, f"{BASE}/prepared-outputs/{run_id}") == (
        200,
        {"run_id": run_id, "prepared_outputs": {"schema_version": 1, "outputs": []}},
    )


def start_serve(project, *args, env=None):
    env = {**project.env, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return serve_in(project.root, env, args)


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_pikaci_serve_answers_and_stops_cleanly(real_project, tmp_path, stop_signal):
    project = real_project
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# served in tests\n{TOKEN}\n")
    process, port = start_serve(project, env={"PIKACI_SERVER_TOKENS_FILE": str(tokens_file)})
    try:
        (run_id,) = project.run_ids()
        # the default repository: the source directory's name, slugified
        assert raw_get(port, "/api/repos") == (200, {"repos": ["my-repo"]})
        status, body = raw_get(port, f"/api/repos/my-repo/pikaci/run/{run_id}?secret=hunter2")
        assert status == 200 and body["run_id"] == run_id
        assert raw_get(port, "/api/repos", token=OTHER) == (401, {"error": INVALID_TOKEN})
    finally:
        process.send_signal(stop_signal)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"GET /api/repos/my-repo/pikaci/run/{run_id} 200" in err
    assert "GET /api/repos 401" in err
    assert "hunter2" not in err
    assert err.rstrip().endswith("pikaci serve: stopped")


@pytest.mark.slow
def test_pikaci_serve_with_several_repositories(real_project, tmp_path):
    other = StateRoot(tmp_path / "other")
    make_run(other, rid(1))
    process, port = start_serve(
        real_project,
        "--repo",
        f"first={real_project.state_root}",
        "--repo",
        f"second={other.root}",
        env={"PIKACI_SERVER_TOKENS": f"{OTHER},{TOKEN}"},
    )
    try:
        assert raw_get(port, "/api/repos") == (200, {"repos": ["first", "second"]})
        runs = raw_get(port, "/api/repos/second/pikaci/runs")[1]["runs"]
        assert [run["run_id"] for run in runs] == [rid(1)]
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert process.returncode == 0


@pytest.mark.slow
def test_pikaci_serve_refuses_to_start_without_tokens(real_project):
    result = real_project.pikaci("serve", "--port", "0", env={"PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 1
    assert result.stderr.startswith("pikaci: error: no server tokens configured")
    assert len(result.stderr.splitlines()) == 1
    wide = real_project.pikaci("serve", "--no-auth", "--host", "0.0.0.0", "--port", "0")
    assert wide.returncode == 1
    assert "--no-auth is only allowed on a loopback address" in wide.stderr
    bad = real_project.pikaci("serve", "--repo", "a/b=/x", env={"PIKACI_SERVER_TOKENS": "t"})
    assert bad.returncode == 1 and "a slug is made of" in bad.stderr


@pytest.mark.slow
def test_pikaci_serve_without_auth_on_loopback(real_project):
    process, port = start_serve(real_project, "--no-auth")
    try:
        assert raw_get(port, "/api/repos", token=None) == (200, {"repos": ["my-repo"]})
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


@pytest.mark.slow
def test_doit_serve_task_serves_this_checkout_and_is_never_a_default(real_project):
    project = real_project
    listing = project.doit("list")
    assert any(line.startswith("serve ") for line in listing.stdout.splitlines())
    refused = project.doit("serve", "--port", "0")  # no tokens configured: a clear task error
    assert refused.returncode != 0
    assert "serve: no server tokens configured" in refused.stdout + refused.stderr
    env = {**project.env, "PYTHONPATH": str(REPO_ROOT)}
    process, port = serve_in(project.root, env, ["--no-auth"], command=[*DOIT, "serve"])
    try:
        (run_id,) = project.run_ids()
        status, body = raw_get(port, f"/api/repos/my-repo/pikaci/run/{run_id}", token=None)
        assert status == 200 and body["run_id"] == run_id
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "pikaci serve: stopped" in err
    # plain `doit` runs the default lanes, never the server
    assert project.run_ids() == [run_id]


def test_the_list_parses_a_record_again_only_when_it_changed(app, root, monkeypatch):
    import pikaci.server.access as access

    writers = {n: make_run(root, rid(n)) for n in range(1, 6)}
    parsed = []
    real = access.read_json_object

    def counting(path):
        parsed.append(Path(path).parent.name)
        return real(path)

    monkeypatch.setattr(access, "read_json_object", counting)
    assert len(get(app, f"{BASE}/runs")[1]["runs"]) == 5
    assert sorted(parsed) == [rid(n) for n in range(1, 6)]
    parsed.clear()
    assert len(get(app, f"{BASE}/runs")[1]["runs"]) == 5
    assert parsed == []  # nothing changed: no record is read again

    def fail(run):
        run.status = "failed"

    writers[3].update(fail)
    (root.runs_dir / rid(5) / "run.json").write_text("{ torn")
    body = get(app, f"{BASE}/runs")[1]
    assert sorted(parsed) == [rid(3), rid(5)]
    assert {run["run_id"]: run["status"] for run in body["runs"]}[rid(3)] == "failed"
    assert rid(5) not in [run["run_id"] for run in body["runs"]]
    assert body["problems"] and body["problems"][0].startswith(f"runs/{rid(5)}/run.json")
    # a run removed by gc drops out of the list at once
    parsed.clear()
    shutil.rmtree(root.runs_dir / rid(1))
    assert [run["run_id"] for run in get(app, f"{BASE}/runs")[1]["runs"]] == [
        rid(4),
        rid(3),
        rid(2),
    ]
