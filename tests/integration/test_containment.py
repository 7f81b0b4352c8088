"""Host-process lanes cannot leave a process behind, here or on a builder: one that starts a
session of its own (`setsid -f`) is stopped with the lane and named in the job's host log."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Optional

import pytest

from tests.fixtures.projects import LaneSpec

ESCAPE_SECS = 3


def escaping_command(mark: Path, tag: str) -> str:
    """Starts a process in its own session that would write `mark` after the lane ended."""
    return (
        f"setsid -f sh -c 'sleep {ESCAPE_SECS}; echo survived > {mark}' {tag} "
        "</dev/null >/dev/null 2>&1 & sleep 0.5; echo lane done"
    )


def survivors(tag: str) -> str:
    found = subprocess.run(["pgrep", "-af", tag], capture_output=True, text=True, check=False)
    return found.stdout.strip()


@pytest.mark.parametrize("placement", ["local", "remote_ssh"])
def test_a_process_in_its_own_session_does_not_outlive_its_lane(
    make_project, request, placement: str
) -> None:
    env: Optional[Dict[str, str]] = None
    if placement == "remote_ssh":
        env = request.getfixturevalue("remote_builder_env")
    tag = f"pikaci-escape-{uuid.uuid4().hex[:12]}"
    mark = Path("/tmp") / f"{tag}.mark"
    project = make_project([LaneSpec("escape", escaping_command(mark, tag), placement=placement)])
    try:
        done = project.doit("run", "lane:escape", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert survivors(tag) == ""
        time.sleep(ESCAPE_SECS + 1)
        assert not mark.exists(), "a process the lane started outlived it"
        (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
        host_log = Path(job["host_log_path"]).read_text()
        assert "[pikaci] killed process" in host_log and tag in host_log
    finally:
        mark.unlink(missing_ok=True)


def test_a_timed_out_lane_takes_its_escaped_processes_with_it(make_project) -> None:
    tag = f"pikaci-escape-{uuid.uuid4().hex[:12]}"
    command = (
        f"setsid -f sh -c 'trap \"\" TERM; sleep 60' {tag} </dev/null >/dev/null 2>&1; sleep 60"
    )
    project = make_project([LaneSpec("slow", command, timeout_secs=2)])
    started = time.monotonic()
    done = project.doit("run", "lane:slow")
    assert done.returncode != 0
    assert time.monotonic() - started < 30
    assert survivors(tag) == ""  # even one that ignores SIGTERM
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert job["status"] == "failed" and "timed out after 2s" in job["message"]


FORK_CHAIN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
end = time.time() + float(sys.argv[1])
if os.fork():
    os._exit(0)
os.setsid()
while time.time() < end:
    if os.fork():
        os._exit(0)  # the process is a new one every few hundred microseconds
open(sys.argv[2], "w").write("survived")
"""


def test_a_process_that_forks_and_exits_in_a_loop_does_not_outlive_its_lane(
    make_project, tmp_path: Path
) -> None:
    """Never in one /proc scan and deaf to SIGTERM: only a sweep that watches its orphans
    arrive and kills them as they come catches it."""
    tag = f"pikaci-chain-{uuid.uuid4().hex[:12]}"
    mark = tmp_path / "mark"
    script = tmp_path / f"{tag}.py"
    script.write_text(FORK_CHAIN)
    command = f"{sys.executable} {script} {ESCAPE_SECS + 3} {mark}; sleep 0.5; echo lane done"
    project = make_project([LaneSpec("chain", command)])
    done = project.doit("run", "lane:chain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert survivors(tag) == ""
    time.sleep(ESCAPE_SECS + 4)
    assert not mark.exists(), "a forking process the lane started outlived it"
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    host_log = Path(job["host_log_path"]).read_text()
    assert "[pikaci] killed process" in host_log
