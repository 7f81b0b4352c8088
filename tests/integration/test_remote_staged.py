"""Staged payloads for lanes on a builder, in both modes, against a real sshd on 127.0.0.1 whose
Nix store is a separate chroot store: `builder` (nix build there, against the uploaded
snapshot) and `copy` (built here, closure copied with `nix copy --to ssh://…`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, List

import orjson
import pytest

from tests.fixtures.projects import LaneSpec, doit_until_printed, executed_tasks, reused_tasks
from tests.fixtures.sshd import USER, Sshd
from tests.fixtures.staged import BUILD_ROOT, WRAPPERS

LANE = LaneSpec(
    "check",
    f"{BUILD_ROOT}/bin/run-check",
    placement="remote_ssh",
    runtime="bubblewrap",
)


@pytest.fixture
def builder_env(sshd: Sshd, remote_builder_env: Dict[str, str], tmp_path: Path) -> Dict[str, str]:
    """The builder, its work dir and its own chroot Nix store, plus a counting `ssh` first on
    PATH (every ssh the run starts, nix's own included, appends its arguments to a file)."""
    bindir = tmp_path / "counting-ssh"
    bindir.mkdir()
    real = subprocess.run(["sh", "-c", "command -v ssh"], capture_output=True, text=True)
    script = bindir / "ssh"
    script.write_text(
        # one line per invocation: the arguments up to the remote command's first line
        f'#!/bin/sh\nprintf "%s\\n" "$*" | head -n 1 >> "{bindir}/calls"\n'
        f'exec {real.stdout.strip()} "$@"\n'
    )
    script.chmod(0o755)
    return {
        **remote_builder_env,
        "PIKACI_BUILDER_NIX_STORE": f"{sshd.work_dir()}/store",
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
    }


def ssh_round_trips(env: Dict[str, str]) -> List[str]:
    """ssh invocations that reach the builder (`-O check|exit` only talk to the local master)."""
    calls = Path(env["PATH"].split(os.pathsep)[0]) / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.write_text("")
    return [line for line in lines if " -O " not in f" {line} "]


def in_builder_store(env: Dict[str, str], store_path: str) -> bool:
    return Path(env["PIKACI_BUILDER_NIX_STORE"] + store_path).exists()


def staged(make_staged_project, realize: str):  # type: ignore[no-untyped-def]
    return make_staged_project(WRAPPERS, {"main": [LANE]}, realize=realize, hermetic=True)


def check_bundle(record: Dict[str, object]) -> Dict[str, object]:
    (job,) = record["jobs"]  # type: ignore[misc]
    assert job["status"] == "passed", job
    assert job["executor"] == "remote_ssh_host_process" and job["sandbox"] == "bubblewrap"
    host_log = Path(job["host_log_path"]).read_text()
    artifacts = Path(job["artifacts_dir"])
    assert "hello" in (artifacts / "guest.log").read_text()
    assert "staged lane ran as 1000" in (artifacts / "guest.log").read_text()
    assert (artifacts / "all.txt").read_text() == "hello\n"
    assert "nix" in host_log
    return job


def test_payloads_built_on_the_builder(make_staged_project, builder_env):
    project = staged(make_staged_project, "builder")
    first = project.doit("run", "lane:check", env=builder_env)
    assert first.returncode == 0, first.stdout + first.stderr
    record = project.latest_run()
    check_bundle(record)
    outputs = orjson.loads(Path(str(record["prepared_outputs_path"])).read_bytes())["outputs"]
    assert {o["residency"] for o in outputs} == {"remote_authoritative_staged_linux"}
    # bind-mounted from the builder's store: the reference's nearest consumer, pikaci's beside
    assert {(o["consumer"], o["pikaci_consumer"]) for o in outputs} == {
        ("remote_exposure_request_v1", "builder_bind_mounts_v1")
    }
    for output in outputs:
        path = output["realized_path"]
        assert in_builder_store(builder_env, path), "realized in the builder's store"
        assert not Path(path).exists(), "and never here: no fallback to a local build"
    uploads = record["uploads"]
    assert [u["kind"] for u in uploads] == ["snapshot", "snapshot", "snapshot"]  # type: ignore[index]
    assert [u["skipped"] for u in uploads] == [False, True, True]  # type: ignore[index]
    # the remote scripts (lease, publish, build) go to the host log, not to the console
    console = first.stdout + first.stderr
    host_log = Path(str(record["jobs"][0]["host_log_path"])).read_text()  # type: ignore[index]
    for script_line in ("set -eu", "exec cat >/dev/null"):
        assert script_line not in console and script_line in host_log
    assert "published remote snapshot" in console

    ssh_round_trips(builder_env)
    again = project.doit("run", "lane:check", env=builder_env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert executed_tasks(again.stdout) == [], again.stdout
    assert "execute:check" in reused_tasks(again.stdout)
    trips = ssh_round_trips(builder_env)
    # one batched validity query per payload build, nothing else
    assert len(trips) <= 3, trips
    assert project.latest_run()["uploads"] == []


def test_payloads_copied_to_the_builder(make_staged_project, builder_env):
    project = staged(make_staged_project, "copy")
    first = project.doit("run", "lane:check", env=builder_env)
    assert first.returncode == 0, first.stdout + first.stderr
    record = project.latest_run()
    check_bundle(record)
    outputs = orjson.loads(Path(str(record["prepared_outputs_path"])).read_bytes())["outputs"]
    for output in outputs:
        assert output["residency"] == "local_authoritative"
        assert Path(output["realized_path"]).exists()
        assert in_builder_store(builder_env, output["realized_path"])
    (closure,) = [u for u in record["uploads"] if u["kind"] == "closure"]  # type: ignore[union-attr]
    assert closure["paths"] >= 2 and closure["bytes"] > 0 and not closure["skipped"]
    assert closure["node_id"] == "upload:shared"

    ssh_round_trips(builder_env)
    again = project.doit("run", "lane:check", env=builder_env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert executed_tasks(again.stdout) == [], again.stdout
    trips = ssh_round_trips(builder_env)
    assert len(trips) <= 2, trips  # the one batched "what is missing" query
    assert project.latest_run()["uploads"] == []


def dropping_ssh(tmp_path: Path, env: Dict[str, str], drops: int) -> Dict[str, str]:
    """An `ssh` first on PATH whose connection for nix's store protocol (`nix-store --serve`)
    drops the first `drops` times, as a reset connection does (ssh exit 255)."""
    bindir = tmp_path / "dropping-ssh"
    bindir.mkdir()
    script = bindir / "ssh"
    script.write_text(
        "#!/bin/bash\n"
        f'count=$(cat "{bindir}/drops" 2>/dev/null || echo 0)\n'
        f'if [[ "$*" == *"nix-store --serve"* ]] && [ "$count" -lt {drops} ]; then\n'
        f'  echo $((count + 1)) > "{bindir}/drops"\n'
        '  echo "Connection reset by 127.0.0.1 port 22" >&2\n'
        "  exit 255\n"
        "fi\n"
        'PATH="${PATH#*:}" exec ssh "$@"\n'  # the next ssh on PATH
    )
    script.chmod(0o755)
    return {**env, "PATH": f"{bindir}{os.pathsep}{env['PATH']}"}


def test_a_dropped_copy_connection_is_retried(make_staged_project, builder_env, tmp_path):
    project = staged(make_staged_project, "copy")
    env = dropping_ssh(tmp_path, builder_env, drops=1)
    done = project.doit("run", "lane:check", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "dropping-ssh" / "drops").read_text().strip() == "1"
    assert "nix copy failed" in done.stdout and "retry 1/2" in done.stdout
    (closure,) = [u for u in project.latest_run()["uploads"] if u["kind"] == "closure"]
    assert closure["paths"] >= 2 and not closure["skipped"]


def test_a_connection_that_keeps_dropping_is_one_clear_error(
    make_staged_project, builder_env, tmp_path
):
    project = staged(make_staged_project, "copy")
    env = dropping_ssh(tmp_path, builder_env, drops=99)
    done = project.doit("run", "lane:check", env=env)
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    assert (
        "upload:shared (target main): upload:shared: nix copy to pikaci-test-builder failed "
        "after 3 attempt(s)" in done.stdout + done.stderr
    )
    (job,) = project.latest_run()["jobs"]
    assert job["status"] == "failed" and "prepare-shared-upload" in job["message"]


def test_a_garbage_collection_on_the_builder_during_a_lane_keeps_its_payloads(
    make_staged_project, builder_env
):
    """Copied closures have no root of their own on the builder: the lane's lease roots them in
    its run's directory, so the builder's own `nix-store --gc`, run while the lane waits,
    leaves them and the lane reads them afterwards."""
    lane = LaneSpec(
        "check",
        f"echo waiting; sleep 4; {BUILD_ROOT}/bin/run-check",
        placement="remote_ssh",
        runtime="bubblewrap",
    )
    project = make_staged_project(WRAPPERS, {"main": [lane]}, realize="copy", hermetic=True)
    store = builder_env["PIKACI_BUILDER_NIX_STORE"]
    proc, seen = doit_until_printed(project, builder_env, "lane:check", "[check] waiting")
    collected = subprocess.run(
        ["su", "-s", "/bin/sh", USER, "-c", f"nix-store --store {store} --gc"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert collected.returncode == 0, collected.stderr
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(seen) + rest
    record = project.latest_run()
    for output in orjson.loads(Path(str(record["prepared_outputs_path"])).read_bytes())["outputs"]:
        assert in_builder_store(builder_env, output["realized_path"])
