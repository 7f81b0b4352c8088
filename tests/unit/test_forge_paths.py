"""The forge's paths (reference §8) in-process: the API's bodies under `/git/api/forge/pikaci`
and `/news/api/forge/pikaci`, the same tokens, every other failure a 404, and the branch-log
path answering that pikaci keeps no branches."""

from __future__ import annotations

from typing import Any

import pytest

from pikaci.server.access import LOG_CAP
from pikaci.server.app import make_app
from pikaci.server.auth import INVALID_TOKEN, MISSING_TOKEN
from pikaci.server.forge_paths import NO_BRANCH, NO_FORGE_REPO
from pikaci.store import StateRoot
from tests.fixtures.api import BASE, SLUG, TOKENS, call, get
from tests.fixtures.serving import make_run, rid

GIT = "/git/api/forge/pikaci"
NEWS = "/news/api/forge/pikaci"


@pytest.fixture
def app(state_root: StateRoot) -> Any:
    return make_app({SLUG: state_root}, TOKENS)


@pytest.mark.parametrize("prefix", [GIT, NEWS])
def test_run_and_logs_are_the_apis_bodies(app, state_root, prefix):
    make_run(state_root, rid(1), jobs=("a", "b"), prepared=True)
    assert get(app, f"{prefix}/run/{rid(1)}") == get(app, f"{BASE}/run/{rid(1)}")
    for query in ("", "job=b", "job=b&kind=host", "kind=guest"):
        forge = get(app, f"{prefix}/logs/{rid(1)}", query)
        assert forge == get(app, f"{BASE}/logs/{rid(1)}", query), query
        assert forge[0] == 200
    assert get(app, f"{prefix}/logs/{rid(1)}", "job=b")[1]["host"] == "host of b\n"


def test_prepared_outputs_on_the_git_prefix(app, state_root):
    make_run(state_root, rid(1), prepared=True)
    body = get(app, f"{GIT}/prepared-outputs/{rid(1)}")
    assert body == get(app, f"{BASE}/prepared-outputs/{rid(1)}") and body[0] == 200
    (state_root.runs_dir / rid(1) / "prepared-outputs.json").unlink()
    assert get(app, f"{GIT}/prepared-outputs/{rid(1)}") == (
        404,
        {"error": f"prepared outputs not found for run `{rid(1)}`"},
    )


@pytest.mark.parametrize("prefix", [GIT, NEWS])
def test_every_failure_is_a_404_with_its_message(app, state_root, prefix):
    make_run(state_root, rid(1))
    make_run(state_root, rid(2), jobs=())
    (state_root.runs_dir / rid(3)).mkdir(parents=True)
    (state_root.runs_dir / rid(3) / "run.json").write_text('{"run_id": "trunc')
    assert get(app, f"{prefix}/run/{rid(9)}") == (404, {"error": f"run `{rid(9)}` not found"})
    status, body = get(app, f"{prefix}/run/{rid(3)}")
    assert status == 404 and "invalid JSON" in body["error"]
    status, body = get(app, f"{prefix}/run/not-a-run-id")  # the API says 400
    assert status == 404 and body["error"].startswith("invalid run id")
    assert get(app, f"{prefix}/logs/{rid(1)}", "job=zzz") == (
        404,
        {"error": f"run `{rid(1)}` has no job `zzz`"},
    )
    assert get(app, f"{prefix}/logs/{rid(2)}") == (404, {"error": f"run `{rid(2)}` has no jobs"})
    status, body = get(app, f"{prefix}/logs/{rid(1)}", "job=..%2F..%2Fetc")
    assert status == 404 and body["error"].startswith("invalid job id")


@pytest.mark.parametrize(
    "path",
    [f"{GIT}/run/{rid(1)}", f"{NEWS}/logs/{rid(1)}", f"{GIT}/prepared-outputs/{rid(1)}",
     "/git/api/forge/branch/7/logs", "/git/api/forge/no-such-path"],
)  # fmt: skip
def test_the_same_tokens_guard_every_forge_path(app, state_root, path):
    make_run(state_root, rid(1))
    assert get(app, path, token=None) == (401, {"error": MISSING_TOKEN})
    status, headers, body = call(app, path, token="not-a-token-at-all")
    assert (status, body) == (401, {"error": INVALID_TOKEN})
    assert headers["www-authenticate"] == "Bearer"


def test_the_branch_log_path_says_there_are_no_branches(app):
    assert get(app, "/git/api/forge/branch/12/logs", "lane=check&lane_run_id=3") == (
        404,
        {"error": NO_BRANCH},
    )


def test_paths_the_forge_never_had_are_json_404s(app, state_root):
    make_run(state_root, rid(1), prepared=True)
    status, body = get(app, f"{NEWS}/prepared-outputs/{rid(1)}")  # news served run and logs
    assert status == 404 and "error" in body
    assert get(app, f"{GIT}/runs")[0] == 404


def test_which_repository_the_forge_paths_read(tmp_path):
    first, second = StateRoot(tmp_path / "first"), StateRoot(tmp_path / "second")
    make_run(second, rid(2))
    by_default = make_app({"first": first, "second": second}, TOKENS)
    assert get(by_default, f"{GIT}/run/{rid(2)}")[0] == 404  # the first repository
    chosen = make_app({"first": first, "second": second}, TOKENS, forge_slug="second")
    assert get(chosen, f"{GIT}/run/{rid(2)}")[1]["run_id"] == rid(2)
    assert get(make_app({}, TOKENS), f"{GIT}/run/{rid(2)}") == (404, {"error": NO_FORGE_REPO})


def test_a_log_longer_than_the_cap_says_how_much_was_cut(app, state_root):
    make_run(state_root, rid(1))
    host = state_root.job_dir(rid(1), "a") / "host.log"
    host.write_bytes(b"x" * 10 + b"y" * LOG_CAP)
    for path in (f"{BASE}/logs/{rid(1)}", f"{GIT}/logs/{rid(1)}"):
        body = get(app, path)[1]
        assert body["omitted_bytes"] == {"host": 10, "guest": 0}
        assert body["host"] == "y" * LOG_CAP
        assert body["guest"] == "guest of a\n"
