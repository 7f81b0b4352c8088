"""The fulfillment helper and launcher (reference §1.2, §3.5) as programs: copied out of the
package and run by an isolated python3 (standard library only, as on a builder), against a
real store path added with `nix-store --add`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.fixtures.support import PIKACI, REPO_ROOT, require_component

HELPER = REPO_ROOT / "pikaci" / "fulfill" / "helper.py"
LAUNCHER = REPO_ROOT / "pikaci" / "fulfill" / "launcher.py"
PYTHON = "/usr/bin/python3"  # a builder's interpreter, without pikaci


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    require_component(shutil.which("nix-store") is not None, "nix-store is not installed")
    source = tmp_path_factory.mktemp("payload") / "payload-manifest.json"
    source.write_text('{"kind": "fulfill-test"}\n')
    done = subprocess.run(["nix-store", "--add", str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def programs(tmp_path) -> Dict[str, Path]:
    """The two programs as a builder gets them: single files, run by an isolated python3."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    found = {}
    for name, source in (("helper", HELPER), ("launcher", LAUNCHER)):
        copy = bindir / source.name
        shutil.copy(source, copy)
        wrapper = bindir / f"pikaci-{name}"
        wrapper.write_text(f'#!/bin/sh\nexec {PYTHON} -I {copy} "$@"\n')
        wrapper.chmod(0o755)
        found[name] = wrapper
    return found


def request(tmp_path: Path, realized: str, exposures: List[Dict[str, Any]], **extra: Any) -> Path:
    data = {
        "schema_version": 1,
        "node_id": "prepare-ws-workspace-deps",
        "installable": "path:/x#ci.x86_64-linux.workspaceDeps",
        "output_name": "ci.x86_64-linux.workspaceDeps",
        "protocol": "nix_store_path_v1",
        "residency": "remote_authoritative_staged_linux",
        "realized_path": realized,
        "requested_exposures": exposures,
        **extra,
    }
    path = tmp_path / "prepared-output-requests" / "prepare-ws-workspace-deps.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def mount(path: Path) -> Dict[str, str]:
    return {"kind": "host_symlink_mount", "path": str(path), "access": "read_only"}


def run(argv: List[Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)


def test_the_helper_links_every_exposure_whatever_was_there(programs, store_path, tmp_path):
    jobs = tmp_path / "jobs"
    as_dir = jobs / "a" / "staged-linux-rust" / "workspace-deps"
    (as_dir / "inner").mkdir(parents=True)
    (as_dir / "inner" / "old.txt").write_text("stale")
    as_file = jobs / "b" / "staged-linux-rust" / "workspace-deps"
    as_file.parent.mkdir(parents=True)
    as_file.write_text("a file in the way")
    fresh = jobs / "c" / "staged-linux-rust" / "workspace-deps"  # parents made as needed
    req = request(tmp_path, store_path, [mount(as_dir), mount(as_file), mount(fresh)])
    result_path = tmp_path / "prepared-output-results" / "prepare-ws-workspace-deps.json"
    done = run([programs["helper"], "--result-path", result_path, req])
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert done.stdout.count("\n") == 1 and printed == json.loads(result_path.read_text())
    assert printed["status"] == "succeeded" and printed["error"] is None
    assert printed["request_path"] == str(req) and printed["realized_path"] == store_path
    assert printed["fulfilled_exposures_count"] == 3
    assert printed["fulfilled_exposures"] == [mount(as_dir), mount(as_file), mount(fresh)]
    for link in (as_dir, as_file, fresh):
        assert link.is_symlink() and str(link.readlink()) == store_path
    again = run([programs["helper"], req])  # idempotent: links replaced by links
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "succeeded"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"realized_path": "/etc"}, "`realized_path`: '/etc' is not a path under /nix/store"),
        ({"realized_path": "/nix/store/../../etc"}, "is not a path under /nix/store"),
        ({"realized_path": "/nix/store/0000-gone"}, "/nix/store/0000-gone does not exist"),
        ({"protocol": "tarball"}, "`protocol`: expected 'nix_store_path_v1'"),
        ({"schema_version": 2}, "`schema_version`: expected 1, got 2"),
        ({"node_id": ""}, "`node_id`: expected a non-empty string"),
        ({"requested_exposures": [{"kind": "bind", "path": "/tmp/x"}]}, "kind: expected"),
        ({"requested_exposures": [{"kind": "host_symlink_mount", "path": "rel"}]}, "path:"),
        ({"requested_exposures": [{"kind": "host_symlink_mount", "path": "/a/../b"}]}, "path:"),
        ({"requested_exposures": [mount(Path("/"))]}, "refusing to replace /"),
    ],
)
def test_a_bad_request_fails_with_the_field_named(programs, store_path, tmp_path, change, message):
    fields = {"realized_path": store_path, "requested_exposures": [], **change}
    exposures = fields.pop("requested_exposures")
    req = request(tmp_path, fields.pop("realized_path"), exposures, **fields)
    result_path = tmp_path / "result.json"
    done = run([programs["helper"], f"--result-path={result_path}", req])
    assert done.returncode == 1
    result = json.loads(result_path.read_text())
    assert result["status"] == "failed" and message in result["error"], result["error"]
    assert done.stderr == f"pikaci-fulfill-prepared-output: {result['error']}\n"
    assert result["fulfilled_exposures_count"] == 0


def test_usage_errors(programs, tmp_path):
    for argv in ([], ["a", "b"], ["--result-path"], ["--bogus", "x"], ["--result-path=", "x"]):
        done = run([programs["helper"], *argv])
        assert done.returncode == 2 and done.stderr.startswith("usage: "), argv
    unreadable = run([programs["helper"], tmp_path / "missing.json"])
    assert unreadable.returncode == 1 and "No such file" in json.loads(unreadable.stdout)["error"]


def test_the_launcher_runs_the_helper_its_request_names(programs, store_path, tmp_path):
    link = tmp_path / "jobs" / "a" / "workspace-deps"
    req = request(tmp_path, store_path, [mount(link)])
    result_path = tmp_path / "results" / "r.json"
    launch = tmp_path / "launch.json"
    launch.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "helper_program": str(programs["helper"]),
                "helper_request_path": str(req),
                "helper_result_path": str(result_path),
                "node_id": "prepare-ws-workspace-deps",
                "output_name": "ci.x86_64-linux.workspaceDeps",
            }
        )
    )
    done = run([programs["launcher"], launch])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"  # the helper's line, relayed
    assert json.loads(result_path.read_text())["fulfilled_exposures_count"] == 1
    assert str(link.readlink()) == store_path
    # the helper's failure is the launcher's
    bad = request(tmp_path, "/etc", [mount(link)])
    launch.write_text(launch.read_text().replace(str(req), str(bad)))
    failed = run([programs["launcher"], launch])
    assert failed.returncode == 1 and "is not a path under /nix/store" in failed.stderr
    launch.write_text(json.dumps({"schema_version": 2}))
    wrong = run([programs["launcher"], launch])
    assert wrong.returncode == 1
    assert "field `schema_version`: expected 1, got 2" in wrong.stderr
    launch.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "helper_program": str(tmp_path / "nope"),
                "helper_request_path": "r",
                "helper_result_path": "s",
            }
        )
    )
    missing = run([programs["launcher"], launch])
    assert missing.returncode == 1 and "cannot start" in missing.stderr
    assert run([programs["launcher"]]).returncode == 2


def test_the_installed_programs_and_the_cli_command(store_path, tmp_path):
    bindir = Path(sys.executable).parent
    helper = bindir / "pikaci-fulfill-prepared-output"
    assert helper.is_file(), "installed with the package (pyproject [project.scripts])"
    link = tmp_path / "x" / "workspace-build"
    req = request(tmp_path, store_path, [mount(link)])
    assert run([helper, req]).returncode == 0
    link.unlink()
    done = run([*PIKACI, "fulfill-prepared-output-request", req])
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"request={req}\noutput=ci.x86_64-linux.workspaceDeps\nrequested_exposures=1\n"
    )
    assert link.is_symlink()
    bad = request(tmp_path, "/etc", [])
    failed = run([*PIKACI, "fulfill-prepared-output-request", bad])
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"pikaci: error: {bad}: request field `realized_path`")
