"""`remote_ssh` + `bubblewrap` lanes: the guest layout on a builder, against a real sshd on
127.0.0.1 (the builder is this machine, its login user is `pikaci-remote`); the pieces
in-process: `tests/unit/test_remote_sandbox.py`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import orjson
import pytest

from tests.fixtures.projects import LaneSpec, executed_tasks, interrupt_when_printed, reused_tasks
from tests.fixtures.sshd import Sshd

PROBE = """
echo "uid=$(id -u) user=$(id -un) home=$HOME"
echo "run dir:" $(ls /run/pika-cloud)
echo "workspace=$PWD"
cat /workspace/snapshot/src/hello.txt
if touch /workspace/snapshot/intruder 2>/dev/null; then echo "snapshot WRITABLE"; exit 9; fi
echo "snapshot read-only"
test -x /run/current-system/sw/bin/pikaci-incus-run && echo "runner in the profile"
echo "interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' ')"
echo "FOO=${FOO:-unset}"
mkdir "$ARTIFACTS/sub" && echo artifact > "$ARTIFACTS/sub/probe.txt"
ln -s /etc/passwd "$ARTIFACTS/link.txt"
"""


def sandboxed(lane_id: str, command: str, **kwargs) -> LaneSpec:
    return LaneSpec(lane_id, command, placement="remote_ssh", runtime="bubblewrap", **kwargs)


def lane_processes(sshd: Sshd, needles: List[str]) -> List[str]:
    """The builder user's processes mentioning any of `needles`, once they had time to go."""
    deadline = time.monotonic() + 15
    while True:
        found = [p for p in sshd.user_processes() if any(n in p for n in needles)]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# -- end to end, through doit -----------------------------------------------------------------


def test_a_remote_sandbox_lane_gets_the_guest_layout_on_the_builder(
    make_project,
    remote_builder_env,
    sshd,
):
    project = make_project([sandboxed("probe", PROBE, env={"FOO": "bar"})])
    first = project.doit("run", "lane:probe", env=remote_builder_env)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "[probe] uid=1000 user=pikaci home=/home/pikaci" in out
    (listing,) = [line for line in out.splitlines() if line.startswith("[probe] run dir:")]
    assert {"artifacts", "guest-request.json", "logs", "status.json"} <= set(listing.split()[3:])
    assert "[probe] workspace=/workspace/snapshot" in out
    assert "[probe] hello" in out
    assert "[probe] snapshot read-only" in out
    assert "[probe] runner in the profile" in out
    assert "[probe] interfaces: lo " in out  # no network unless the lane asks for it
    assert "[probe] FOO=bar" in out

    record = project.latest_run()
    run_id = str(record["run_id"])
    (job,) = record["jobs"]  # type: ignore[misc]
    assert (job["status"], job["exit_code"], job["message"]) == ("passed", 0, "test passed")
    assert (job["executor"], job["runtime"], job["sandbox"]) == (
        "remote_ssh_host_process",
        "host_process",
        "bubblewrap",
    )
    job_dir = Path(job["host_log_path"]).parent
    artifacts = Path(job["artifacts_dir"])
    assert (artifacts / "sub" / "probe.txt").read_text() == "artifact\n"
    assert not (artifacts / "link.txt").exists()  # never a link from the builder
    for name in ("guest.log", "events.jsonl", "status.json", "result.json"):
        assert (artifacts / name).is_file(), name
    assert "snapshot read-only" in (artifacts / "guest.log").read_text()
    events = [orjson.loads(line) for line in (artifacts / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["booted", "starting", "completed"]
    # the runner names the guest it runs in: this is no Incus instance
    assert events[0]["message"] == "bubblewrap guest booted"
    assert "[pikaci] bubblewrap guest booted at " in (artifacts / "guest.log").read_text()
    assert orjson.loads((artifacts / "result.json").read_bytes())["status"] == "completed"
    host_log = Path(job["host_log_path"]).read_text()
    assert "[runner:stdout] snapshot read-only" in host_log
    assert "sandbox command: ['bwrap', '--die-with-parent'" in host_log
    assert "collect: skipped artifact `artifacts/link.txt`: not a regular file" in host_log
    # the end marker and the result after it are the run's own, never shown as output
    runner_lines = [line for line in host_log.splitlines() if line.startswith("[runner:stdout]")]
    assert not [line for line in runner_lines if "__pikaci_sandbox_result_" in line]
    assert not [line for line in runner_lines if "finished_at" in line]
    assert not [line for line in out.splitlines() if "finished_at" in line]
    assert not (job_dir / "runtime").exists()

    work = Path(remote_builder_env["PIKACI_BUILDER_WORK_DIR"])
    assert not (work / "runs" / run_id / "jobs" / "probe" / "pika-cloud").exists()
    (profile,) = (work / "sandbox").glob("sw-*")
    assert (profile / "bin" / "pikaci-incus-run").is_file()
    assert (profile / "bin" / "sh").is_symlink()
    assert not list((work / "sandbox").glob(".sw-*"))
    (upload,) = record["uploads"]  # type: ignore[misc]
    assert (upload["kind"], upload["node_id"], upload["skipped"]) == (
        "snapshot",
        "execute:probe",
        False,
    )

    again = project.doit("run", "lane:probe", env=remote_builder_env)
    assert executed_tasks(again.stdout) == [] and "execute:probe" in reused_tasks(again.stdout)


def test_parallel_remote_sandbox_lanes_share_the_profile_and_the_snapshot(
    make_project, remote_builder_env
):
    project = make_project([sandboxed(lane, "echo hi") for lane in ("a", "b", "c")])
    result = project.doit("run", "-n", "3", "target:main", env=remote_builder_env)
    assert result.returncode == 0, result.stdout + result.stderr
    record = project.latest_run()
    assert {job["status"] for job in record["jobs"]} == {"passed"}  # type: ignore[union-attr]
    uploads = record["uploads"]
    assert sorted(u["node_id"] for u in uploads) == ["execute:a", "execute:b", "execute:c"]  # type: ignore[union-attr]
    assert sum(not u["skipped"] for u in uploads) == 1  # type: ignore[union-attr]
    work = Path(remote_builder_env["PIKACI_BUILDER_WORK_DIR"])
    assert len(list((work / "sandbox").glob("sw-*"))) == 1  # the race is lost cleanly
    assert not list((work / "sandbox").glob(".sw-*"))


@pytest.mark.parametrize(
    ("command", "timeout", "code", "message"),
    [
        ("echo failing; exit 3", 60, 3, "test command exited with 3"),
        ("echo started; sleep 347", 1, 124, "timed out after 1s"),
    ],
)
def test_remote_sandbox_failures_propagate_and_leave_nothing_running(
    make_project,
    remote_builder_env,
    sshd,
    command,
    timeout,
    code,
    message,
):
    project = make_project([sandboxed("f", command, timeout_secs=timeout)])
    result = project.doit("run", "lane:f", env=remote_builder_env)
    assert result.returncode == 1
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert (job["status"], job["exit_code"], job["message"]) == ("failed", code, message)
    artifacts = Path(job["artifacts_dir"])
    assert orjson.loads((artifacts / "result.json").read_bytes())["exit_code"] == code
    echoed = command.split(";")[0].split()[1]  # what the command printed first
    assert echoed in (artifacts / "guest.log").read_text()
    assert lane_processes(sshd, ["sleep 347", remote_builder_env["PIKACI_BUILDER_WORK_DIR"]]) == []


def test_a_runner_killed_in_the_sandbox_leaves_the_hosts_verdict(make_project, remote_builder_env):
    # the lane's parent is `timeout`, whose parent is the runner
    kill_runner = "echo bye; kill -9 $(cut -d' ' -f4 /proc/$PPID/stat); sleep 5"
    project = make_project([sandboxed("k", kill_runner)])
    assert project.doit("run", "lane:k", env=remote_builder_env).returncode == 1
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert (job["status"], job["exit_code"]) == ("failed", 137)
    assert job["message"].startswith("guest runner left no usable result (exit 137): no ")
    artifacts = Path(job["artifacts_dir"])
    assert orjson.loads((artifacts / "result.json").read_bytes())["message"] == job["message"]
    assert "bye" in (artifacts / "guest.log").read_text()


def test_a_runner_that_cannot_stop_the_lane_is_stopped_by_the_remote_bound(
    make_project,
    remote_builder_env,
    sshd,
):
    # a stopped runner never enforces the timeout: the builder-side bound (+30 s) does
    freeze = "kill -STOP $(cut -d' ' -f4 /proc/$PPID/stat); sleep 349"
    project = make_project([sandboxed("z", freeze, timeout_secs=1)])
    started = time.monotonic()
    assert project.doit("run", "lane:z", env=remote_builder_env).returncode == 1
    assert time.monotonic() - started < 60
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert (job["status"], job["exit_code"], job["message"]) == (
        "failed",
        124,
        "timed out after 1s",
    )
    result = orjson.loads((Path(job["artifacts_dir"]) / "result.json").read_bytes())
    assert result["message"] == "timed out after 1s"
    assert lane_processes(sshd, ["sleep 349", remote_builder_env["PIKACI_BUILDER_WORK_DIR"]]) == []


def test_a_root_lane_is_uid_0_in_the_remote_sandbox(make_project, remote_builder_env):
    project = make_project([sandboxed("r", 'echo "uid=$(id -u) home=$HOME"', run_as_root=True)])
    result = project.doit("run", "lane:r", env=remote_builder_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[r] uid=0 home=/root" in result.stdout


def test_interrupting_a_remote_sandbox_lane_stops_it_on_the_builder(
    make_project,
    remote_builder_env,
    sshd,
):
    project = make_project([sandboxed("s", "echo started; sleep 348")])
    code = interrupt_when_printed(project, remote_builder_env, "lane:s", "[s] started", 60)
    assert code == 130
    assert lane_processes(sshd, ["sleep 348", remote_builder_env["PIKACI_BUILDER_WORK_DIR"]]) == []
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert job["status"] == "failed" and job["message"].startswith("interrupted by SIGINT")
