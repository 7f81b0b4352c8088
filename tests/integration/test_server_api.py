"""The JSON API over a real run's bundle, and the `pikaci serve` command and `doit serve` task
as processes (the API in-process: `tests/unit/test_server_api.py`)."""

from __future__ import annotations

import signal

import pytest

from pikaci.server.app import make_app
from pikaci.server.auth import INVALID_TOKEN
from pikaci.store import StateRoot
from tests.fixtures.api import BASE, OTHER, SLUG, TOKEN, TOKENS, get, raw_get
from tests.fixtures.projects import LaneSpec, new_repository, render_dodo
from tests.fixtures.serving import make_run, rid
from tests.fixtures.serving import start_serve as serve_in
from tests.fixtures.support import DOIT, REPO_ROOT


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


def test_pikaci_serve_with_several_repositories(real_project, tmp_path):
    other = StateRoot(tmp_path / "other")
    make_run(other, rid(1))
    process, port = start_serve(
        real_project,
        "--repo",
        f"first={real_project.state_root}",
        "--repo",
        f"second={other.root}",
        "--forge-repo",
        "second",
        env={"PIKACI_SERVER_TOKENS": f"{OTHER},{TOKEN}"},
    )
    try:
        assert raw_get(port, "/api/repos") == (200, {"repos": ["first", "second"]})
        runs = raw_get(port, "/api/repos/second/pikaci/runs")[1]["runs"]
        assert [run["run_id"] for run in runs] == [rid(1)]
        # the forge's paths read the repository --forge-repo names
        for prefix in ("/git/api/forge/pikaci", "/news/api/forge/pikaci"):
            assert raw_get(port, f"{prefix}/run/{rid(1)}") == (
                200,
                raw_get(port, f"/api/repos/second/pikaci/run/{rid(1)}")[1],
            )
            assert raw_get(port, f"{prefix}/run/{rid(1)}", token=None)[0] == 401
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert process.returncode == 0


def test_pikaci_serve_refuses_to_start_without_tokens(real_project):
    result = real_project.pikaci("serve", "--port", "0", env={"PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 1
    assert result.stderr.startswith("pikaci: error: no server tokens configured")
    assert len(result.stderr.splitlines()) == 1
    wide = real_project.pikaci("serve", "--no-auth", "--host", "0.0.0.0", "--port", "0")
    assert wide.returncode == 1
    assert "--no-auth is only allowed on a loopback address" in wide.stderr
    long_enough = {"PIKACI_SERVER_TOKENS": "a-long-enough-token"}
    bad = real_project.pikaci("serve", "--repo", "a/b=/x", env=long_enough)
    assert bad.returncode == 1 and "a slug is made of" in bad.stderr
    a_file = real_project.root / "dodo.py"
    not_a_root = real_project.pikaci("serve", "--repo", f"a={a_file}", env=long_enough)
    assert not_a_root.returncode == 1
    assert not_a_root.stderr == (
        f"pikaci: error: repository `a`: state root {a_file} is not a directory\n"
    )
    short = real_project.pikaci("serve", env={"PIKACI_SERVER_TOKENS": "t"})
    assert short.returncode == 1 and "shorter than 16 characters" in short.stderr
    unknown = real_project.pikaci("serve", "--forge-repo", "nope", env=long_enough)
    assert unknown.returncode == 1
    assert unknown.stderr == (
        "pikaci: error: --forge-repo 'nope': not a served repository (my-repo)\n"
    )
    port = real_project.pikaci("serve", "--port", "99999", env=long_enough)
    assert port.returncode == 2 and "--port: expected a port number" in port.stderr


def test_pikaci_serve_without_auth_on_loopback(real_project):
    process, port = start_serve(real_project, "--no-auth")
    try:
        assert raw_get(port, "/api/repos", token=None) == (200, {"repos": ["my-repo"]})
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


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
