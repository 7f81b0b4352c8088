"""The run-bundle server's JSON API in-process: endpoints, auth, confinement to the state root, the
`serve` helpers (a real run and `pikaci serve`: `tests/integration/test_server_api.py`)."""

from __future__ import annotations

import io
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

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
from tests.fixtures.api import BASE, OTHER, SLUG, TOKEN, TOKENS, call, get, raw_get
from tests.fixtures.serving import make_run, rid, wsgi_request

# -- crafted state roots ------------------------------------------------------------------------


@pytest.fixture
def app(state_root: StateRoot) -> Any:
    return make_app({SLUG: state_root}, TOKENS)


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
def test_every_route_requires_a_valid_bearer_token(app, state_root, authorization, message):
    make_run(state_root, rid(1))
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


def test_disabled_auth_lets_requests_through(state_root):
    open_app = make_app({SLUG: state_root}, TokenSet(disabled=True))
    assert get(open_app, "/api/repos", token=None) == (200, {"repos": [SLUG]})


def test_an_empty_token_set_accepts_nothing(state_root):
    closed = make_app({SLUG: state_root}, TokenSet())
    assert get(closed, "/api/repos", token="")[0] == 401
    assert get(closed, "/api/repos") == (401, {"error": INVALID_TOKEN})


def test_tokens_from_file_and_environment(tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(
        "# ops team\nalpha-token-0123456  # rotated 2026-01\n\n  beta-token-01234567\n#gamma\n"
    )
    tokens_file.chmod(0o600)
    assert parse_tokens_file(tokens_file.read_text()) == [
        "alpha-token-0123456",
        "beta-token-01234567",
    ]
    tokens = tokens_from_environment(
        {
            "PIKACI_SERVER_TOKENS_FILE": str(tokens_file),
            "PIKACI_SERVER_TOKENS": " c1-token-012345678 ,,c2-token-012345678,",
        }
    )
    assert tokens.tokens == (
        b"alpha-token-0123456",
        b"beta-token-01234567",
        b"c1-token-012345678",
        b"c2-token-012345678",
    )
    assert tokens.check("Bearer c2-token-012345678") is None
    assert tokens.check("Bearer gamma") == INVALID_TOKEN
    with pytest.raises(AuthConfigError, match="no server tokens configured"):
        tokens_from_environment({})
    with pytest.raises(AuthConfigError, match="no server tokens configured"):
        tokens_from_environment({"PIKACI_SERVER_TOKENS": " , "})
    with pytest.raises(AuthConfigError, match="unreadable"):
        tokens_from_environment({"PIKACI_SERVER_TOKENS_FILE": str(tmp_path / "absent")})


@pytest.mark.parametrize("short", ["x9", "fifteen-chars!!"])
def test_a_short_token_is_refused_without_being_printed(short):
    with pytest.raises(AuthConfigError, match="shorter than 16 characters") as caught:
        tokens_from_environment({"PIKACI_SERVER_TOKENS": f"a-long-enough-token,{short}"})
    assert short not in str(caught.value)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_tokens_file_others_can_write_is_refused(tmp_path, mode):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("a-long-enough-token\n")
    tokens_file.chmod(mode)
    with pytest.raises(AuthConfigError, match="others can write it"):
        tokens_from_environment({"PIKACI_SERVER_TOKENS_FILE": str(tokens_file)})


def test_a_token_that_is_not_utf8_is_a_401_not_a_500(app):
    # WSGI hands header bytes over as latin-1 text; the byte 0xff is no UTF-8
    assert get(app, f"{BASE}/runs", authorization="Bearer caf\u00ff") == (
        401,
        {"error": INVALID_TOKEN},
    )


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


def test_an_unexpected_failure_is_a_json_500(app, state_root, monkeypatch):
    make_run(state_root, rid(1))

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire at /secret/place")

    monkeypatch.setattr("pikaci.server.api.load_logs_metadata", explode)
    status, body = get(app, f"{BASE}/bundle/{rid(1)}")
    assert (status, body) == (500, {"error": "internal server error"})


def test_run_record_and_missing_or_invalid_runs(app, state_root):
    make_run(state_root, rid(1), jobs=("a", "b"))
    status, body = get(app, f"{BASE}/run/{rid(1)}")
    assert status == 200
    assert body == orjson.loads((state_root.runs_dir / rid(1) / "run.json").read_bytes())
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


def test_corrupt_run_json_is_a_404_and_a_problem_while_the_list_still_works(app, state_root):
    make_run(state_root, rid(1))
    make_run(state_root, rid(2))
    make_run(state_root, rid(3))
    (state_root.runs_dir / rid(2) / "run.json").write_text('{"run_id": "trunc')
    (state_root.runs_dir / "20260101T000000Z-deadbeef").mkdir()  # a directory without a record
    (state_root.runs_dir / "notes").mkdir()
    status, body = get(app, f"{BASE}/run/{rid(2)}")
    assert status == 404 and "invalid JSON" in body["error"]
    assert str(state_root.root) not in body["error"]
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


def test_a_record_naming_another_run_is_a_problem(app, state_root):
    make_run(state_root, rid(1))
    make_run(state_root, rid(2))
    record = orjson.loads((state_root.runs_dir / rid(2) / "run.json").read_bytes())
    record["run_id"] = rid(1)
    (state_root.runs_dir / rid(2) / "run.json").write_bytes(orjson.dumps(record))
    body = get(app, f"{BASE}/runs")[1]
    assert [run["run_id"] for run in body["runs"]] == [rid(1)]
    assert body["problems"] == [f"runs/{rid(2)}/run.json: records run id {rid(1)!r}"]


# -- prepared outputs and bundles ----------------------------------------------------------------


def test_prepared_outputs_present_absent_and_corrupt(app, state_root):
    make_run(state_root, rid(1), prepared=True)
    make_run(state_root, rid(2))
    make_run(state_root, rid(3), prepared=True)
    (state_root.runs_dir / rid(3) / "prepared-outputs.json").write_text("[1, 2")
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


def test_bundle_keeps_the_run_when_prepared_outputs_are_corrupt(app, state_root):
    make_run(state_root, rid(1), prepared=True, jobs=("a", "b"))
    status, body = get(app, f"{BASE}/bundle/{rid(1)}")
    assert status == 200 and set(body) == {"run", "logs", "prepared_outputs"}
    assert body["prepared_outputs"]["outputs"][0]["realized_path"] == "/nix/store/abc-deps"
    (state_root.runs_dir / rid(1) / "prepared-outputs.json").write_text(
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
    (state_root.job_dir(rid(1), "b") / "host.log").unlink()
    body = get(app, f"{BASE}/bundle/{rid(1)}")[1]
    assert [j["host_log_exists"] for j in body["logs"]["jobs"]] == [True, False]


def test_prepared_outputs_recorded_outside_the_state_root_are_never_read(app, state_root, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(orjson.dumps(PreparedOutputsRecord().to_dict()))
    writer = make_run(state_root, rid(1))
    writer.update(lambda run: setattr(run, "prepared_outputs_path", str(outside)))
    assert get(app, f"{BASE}/prepared-outputs/{rid(1)}")[0] == 404
    assert get(app, f"{BASE}/bundle/{rid(1)}")[1]["prepared_outputs"] is None


# -- logs ----------------------------------------------------------------------------------------


def test_logs_by_job_and_kind(app, state_root):
    make_run(state_root, rid(1), jobs=("a", "b"))
    assert get(app, f"{BASE}/logs/{rid(1)}") == (
        200,
        {
            "run_id": rid(1),
            "job": "a",
            "host": "host of a\n",
            "guest": "guest of a\n",
            "omitted_bytes": {"host": 0, "guest": 0},
        },
    )
    assert get(app, f"{BASE}/logs/{rid(1)}", "job=b&kind=host")[1] == {
        "run_id": rid(1),
        "job": "b",
        "host": "host of b\n",
        "guest": None,
        "omitted_bytes": {"host": 0, "guest": 0},
    }
    assert get(app, f"{BASE}/logs/{rid(1)}", "job=b&kind=guest")[1]["host"] is None
    (state_root.job_dir(rid(1), "b") / "artifacts" / "guest.log").unlink()
    assert get(app, f"{BASE}/logs/{rid(1)}", "job=b")[1]["guest"] is None  # never created
    assert get(app, f"{BASE}/logs/{rid(1)}", "job=zzz") == (
        404,
        {"error": f"run `{rid(1)}` has no job `zzz`"},
    )
    status, body = get(app, f"{BASE}/logs/{rid(1)}", "job=..%2F..%2Fetc")
    assert status == 400 and body["error"].startswith("invalid job id")
    status, body = get(app, f"{BASE}/logs/{rid(1)}", "kind=all")
    assert status == 400 and body["error"] == "invalid kind 'all': expected host|guest|both"
    make_run(state_root, rid(2), jobs=())
    assert get(app, f"{BASE}/logs/{rid(2)}") == (404, {"error": f"run `{rid(2)}` has no jobs"})
    # ids are checked before the disk: a bad job id of an absent run is still a 400
    assert get(app, f"{BASE}/logs/{rid(9)}", "job=..")[0] == 400
    assert get(app, f"{BASE}/tail/{rid(9)}", "job=a/b")[0] == 400


def test_raw_log_streams_the_whole_log_as_text(app, state_root):
    make_run(state_root, rid(1))
    data = b"".join(b"line %06d \xc3\xa9\n" % n for n in range(200000))  # several chunks
    (state_root.job_dir(rid(1), "a") / "host.log").write_bytes(data)
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
    (state_root.job_dir(rid(1), "a") / "artifacts" / "guest.log").unlink()
    status, body = get(app, f"{BASE}/raw-log/{rid(1)}", "kind=guest")
    assert (status, body) == (404, {"error": "job `a` has no guest log"})


def test_an_unreadable_log_is_a_404(app, state_root):
    make_run(state_root, rid(1))
    host = state_root.job_dir(rid(1), "a") / "host.log"
    host.unlink()
    host.mkdir()  # opening a directory fails with something other than "not found"
    status, body = get(app, f"{BASE}/logs/{rid(1)}", "kind=host")
    assert status == 404 and body["error"].startswith("cannot read host.log")
    guest = state_root.job_dir(rid(1), "a") / "artifacts" / "guest.log"
    guest.unlink()
    os.mkfifo(guest)  # nobody writes to it: opening it must not hang the request
    for endpoint, query in (
        ("logs", "kind=guest"),
        ("tail", "kind=guest"),
        ("raw-log", "kind=guest"),
    ):
        status, body = get(app, f"{BASE}/{endpoint}/{rid(1)}", query)
        assert (status, body) == (404, {"error": "cannot read guest.log: not a regular file"})


def test_symlinks_and_recorded_paths_leading_outside_the_root_are_refused(
    app, state_root, tmp_path
):
    secret_dir = tmp_path / "secret"
    (secret_dir / "artifacts").mkdir(parents=True)
    (secret_dir / "host.log").write_text("TOP SECRET\n")
    (secret_dir / "artifacts" / "guest.log").write_text("TOP SECRET\n")
    make_run(state_root, rid(1), jobs=("a", "b"))
    job_b = state_root.job_dir(rid(1), "b")
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
    writer = RunWriter(state_root.run_dir(rid(1)))
    writer.write_job(JobRecord(id="a", status="passed", host_log_path="/etc/passwd"))
    status, body = get(app, f"{BASE}/logs/{rid(1)}", "job=a&kind=host")
    assert status == 404 and "outside the state root" in body["error"]


def test_a_run_directory_symlinked_outside_the_root_is_refused(app, state_root, tmp_path):
    make_run(state_root, rid(1))
    elsewhere = StateRoot(tmp_path / "other")
    make_run(elsewhere, rid(2))
    (state_root.runs_dir / rid(2)).symlink_to(elsewhere.runs_dir / rid(2))
    status, body = get(app, f"{BASE}/run/{rid(2)}")
    assert status == 404 and "outside the state root" in body["error"]
    body = get(app, f"{BASE}/runs")[1]
    assert [run["run_id"] for run in body["runs"]] == [rid(1)]
    assert body["problems"] == [
        f"runs/{rid(2)}: a symbolic link, never followed (it could lead outside the state root)"
    ]
    # run.json itself as a symlink out of the root
    (state_root.runs_dir / rid(1) / "run.json").unlink()
    (state_root.runs_dir / rid(1) / "run.json").symlink_to(elsewhere.runs_dir / rid(2) / "run.json")
    status, body = get(app, f"{BASE}/run/{rid(1)}")
    assert status == 404
    assert body["error"] == (
        f"runs/{rid(1)}/run.json: unreadable "
        "(a symbolic link, never followed: it could lead outside the state root)"
    )


def test_a_state_root_reached_through_a_symlink_still_serves(tmp_path):
    real = StateRoot(tmp_path / "real")
    make_run(real, rid(1))
    (tmp_path / "link").symlink_to(tmp_path / "real")
    linked_app = make_app({SLUG: StateRoot(tmp_path / "link")}, TOKENS)
    assert get(linked_app, f"{BASE}/logs/{rid(1)}")[1]["host"] == "host of a\n"


# -- listing -------------------------------------------------------------------------------------


def test_paging_is_newest_first_with_a_stable_cursor(app, state_root):
    for n in range(7):
        make_run(
            state_root,
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
            make_run(
                state_root, rid(40)
            )  # a run appearing between pages neither shifts nor repeats
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
def test_bad_list_parameters_are_400(app, state_root, query, message):
    make_run(state_root, rid(1))
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


def test_tail_follows_a_growing_log_by_byte_offset(app, state_root):
    writer = make_run(state_root, rid(1), status="running", jobs=("a",))
    host = state_root.job_dir(rid(1), "a") / "host.log"
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


def test_tail_of_a_running_job_whose_orchestrator_died_is_not_running(app, state_root):
    make_run(state_root, rid(1), status="running")
    assert get(app, f"{BASE}/tail/{rid(1)}")[1]["running"] is False


def test_tail_chunks_are_bounded_and_errors_are_400(app, state_root):
    make_run(state_root, rid(1))
    guest = state_root.job_dir(rid(1), "a") / "artifacts" / "guest.log"
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
    (state_root.job_dir(rid(1), "a") / "host.log").unlink()
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
def test_traversal_attempts_over_http_are_json_errors(state_root, target):
    make_run(state_root, rid(1))
    with served(make_app({SLUG: state_root}, TOKENS)) as port:
        status, body = raw_get(port, target)
        assert status in (400, 404) and set(body) == {"error"}, target
        assert "root:" not in str(body)
        assert raw_get(port, target, token=None) == (401, {"error": MISSING_TOKEN})
        assert raw_get(port, f"{BASE}/run/{rid(1)}")[0] == 200


def test_access_log_has_one_line_per_request_without_the_query(state_root):
    log = io.StringIO()
    logged = access_log(make_app({SLUG: state_root}, TOKENS), log)
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


def test_the_list_parses_a_record_again_only_when_it_changed(app, state_root, monkeypatch):
    import pikaci.server.access as access

    writers = {n: make_run(state_root, rid(n)) for n in range(1, 6)}
    parsed = []
    real = access.read_json_below

    def counting(root, path):
        parsed.append(Path(path).parent.name)
        return real(root, path)

    monkeypatch.setattr(access, "read_json_below", counting)
    assert len(get(app, f"{BASE}/runs")[1]["runs"]) == 5
    assert sorted(parsed) == [rid(n) for n in range(1, 6)]
    parsed.clear()
    assert len(get(app, f"{BASE}/runs")[1]["runs"]) == 5
    assert parsed == []  # nothing changed: no record is read again

    def fail(run):
        run.status = "failed"

    writers[3].update(fail)
    (state_root.runs_dir / rid(5) / "run.json").write_text("{ torn")
    body = get(app, f"{BASE}/runs")[1]
    assert sorted(parsed) == [rid(3), rid(5)]
    assert {run["run_id"]: run["status"] for run in body["runs"]}[rid(3)] == "failed"
    assert rid(5) not in [run["run_id"] for run in body["runs"]]
    assert body["problems"] and body["problems"][0].startswith(f"runs/{rid(5)}/run.json")
    # a run removed by gc drops out of the list at once
    parsed.clear()
    shutil.rmtree(state_root.runs_dir / rid(1))
    assert [run["run_id"] for run in get(app, f"{BASE}/runs")[1]["runs"]] == [
        rid(4),
        rid(3),
        rid(2),
    ]
