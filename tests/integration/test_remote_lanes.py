"""`remote_ssh` + `host_process` lanes through doit, against a real sshd on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.fixtures.projects import LaneSpec, executed_tasks, interrupt_when_printed, reused_tasks


def remote(lane_id: str, command: str, **kwargs) -> LaneSpec:
    return LaneSpec(lane_id, command, placement="remote_ssh", runtime="host_process", **kwargs)


def test_remote_lane_runs_on_the_builder_and_its_artifacts_come_back(
    make_project, remote_builder_env
):
    project = make_project(
        [
            remote(
                "r", 'echo "on $(id -un) in $PWD"; cat src/hello.txt; echo out > "$ARTIFACTS/o.txt"'
            )
        ]
    )
    first = project.doit("run", "lane:r", env=remote_builder_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[r] on pikaci-remote in " in first.stdout
    assert "[r] hello" in first.stdout
    record = project.latest_run()
    (job,) = record["jobs"]  # type: ignore[misc]
    assert (job["status"], job["executor"]) == ("passed", "remote_ssh_host_process")
    assert job["message"] == "remote host command passed"
    assert (Path(job["artifacts_dir"]) / "o.txt").read_text() == "out\n"
    host_log = Path(job["host_log_path"]).read_text()
    run_id = str(record["run_id"])
    work = remote_builder_env["PIKACI_BUILDER_WORK_DIR"]
    assert f"{work}/runs/{run_id}/jobs/r/workspace" in host_log  # scoped by run and job
    assert "uploaded" in host_log and "hello" in host_log
    assert not Path(f"{work}/runs/{run_id}/jobs/r/workspace").exists()  # collected, removed
    assert Path(f"{work}/runs/{run_id}/jobs/r/artifacts/o.txt").exists()

    again = project.doit("run", "lane:r", env=remote_builder_env)
    assert executed_tasks(again.stdout) == [] and "execute:r" in reused_tasks(again.stdout)


def test_remote_snapshot_is_published_once_for_two_lanes(make_project, remote_builder_env):
    project = make_project([remote("a", "true"), remote("b", "true")])
    assert project.doit("run", "target:main", env=remote_builder_env).returncode == 0
    logs = [Path(j["host_log_path"]).read_text() for j in project.latest_run()["jobs"]]  # type: ignore[union-attr]
    assert sum("uploaded" in log for log in logs) == 1
    assert sum("already there" in log for log in logs) == 1


@pytest.mark.parametrize(
    ("command", "timeout", "code", "message"),
    [
        ("echo failing; exit 3", 60, 3, "remote host command exited with 3"),
        ("sleep 60", 1, 124, "timed out after 1s"),
    ],
)
def test_remote_failures_propagate_and_leave_nothing_running(
    make_project,
    remote_builder_env,
    sshd,
    command,
    timeout,
    code,
    message,
):
    project = make_project([remote("f", command, timeout_secs=timeout)])
    result = project.doit("run", "lane:f", env=remote_builder_env)
    assert result.returncode == 1
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert (job["status"], job["exit_code"], job["message"]) == ("failed", code, message)
    deadline = time.monotonic() + 15
    while any("sleep 60" in p for p in sshd.user_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any("sleep 60" in p for p in sshd.user_processes())


def test_interrupting_a_remote_lane_stops_it_on_the_builder(make_project, remote_builder_env, sshd):
    project = make_project([remote("s", "echo started; sleep 300")])
    code = interrupt_when_printed(project, remote_builder_env, "lane:s", "[s] started", 60)
    assert code == 130
    deadline = time.monotonic() + 15
    while any("sleep 300" in p for p in sshd.user_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any("sleep 300" in p for p in sshd.user_processes())
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert job["status"] == "failed" and job["message"].startswith("interrupted by SIGINT")


def test_an_unreachable_builder_is_one_clear_error(make_project, remote_builder_env, tmp_path):
    # an alias on loopback where nothing listens: no traffic leaves this machine
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = tmp_path / "ssh_config"
    config.write_text(
        Path(remote_builder_env["PIKACI_BUILDER_SSH_CONFIG"]).read_text()
        + f"\nHost pikaci-dead-builder\n  HostName 127.0.0.1\n  Port {closed_port}\n"
    )
    project = make_project([remote("u", "true")])
    env = {
        **remote_builder_env,
        "PIKACI_BUILDER": "pikaci-dead-builder",
        "PIKACI_BUILDER_SSH_CONFIG": str(config),
    }
    result = project.doit("run", "lane:u", env=env)
    assert result.returncode != 0
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert job["status"] == "failed"
    assert "connection to pikaci-dead-builder failed after 4 attempt(s)" in job["message"]
    assert "\n" not in job["message"]
