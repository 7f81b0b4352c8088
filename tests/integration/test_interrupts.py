"""Interrupts and hard kills: records stay parseable, runs are marked, processes are gone."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from pikaci.model import RunRecord
from tests.fixtures.projects import LaneSpec
from tests.fixtures.support import DOIT


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    ("signum", "parallel"),
    [(signal.SIGINT, []), (signal.SIGTERM, []), (signal.SIGINT, ["-n", "2", "-P", "thread"])],
)
def test_signal_kills_lane_and_marks_run(make_project, tmp_path, signum, parallel):
    pidfile = tmp_path / "lane.pid"
    project = make_project(
        [
            LaneSpec("slow", f"echo $$ > {pidfile}; sleep 120 & echo $! >> {pidfile}; wait"),
            LaneSpec("later", "true"),
        ]
    )
    proc = subprocess.Popen(
        [*DOIT, "run", *parallel, "target:main"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(pidfile)
    time.sleep(0.3)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, out + err
    name = signal.Signals(signum).name
    assert f"{name} received" in out + err

    pids = [int(line) for line in pidfile.read_text().split()]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "the lane's processes survived the interrupt"

    record = project.latest_run()
    assert record["status"] == "failed"
    assert record["message"] == f"interrupted by {name}"
    assert record["finished_at"]
    jobs = {job["id"]: job for job in record["jobs"]}  # type: ignore[union-attr]
    assert jobs["slow"]["status"] == "failed"
    assert jobs["slow"]["message"].startswith(f"interrupted by {name}")
    assert jobs["later"]["status"] != "running"  # passed, or settled by the interrupt
    status = project.pikaci("status", str(record["run_id"]))
    assert f"interrupted by {name}" in status.stdout


def test_sigkill_never_leaves_a_torn_run_json(make_project):
    """Kill the orchestrator at random moments while it rewrites records; all stay parseable."""
    lanes = [LaneSpec(f"l{i:02d}", "sleep 0.05") for i in range(12)]
    project = make_project(lanes)
    rng = random.Random(20261121)
    kills = 0
    for attempt in range(16):
        if attempt % 4 != 3:
            project.doit("forget", "--all")  # mostly executing lanes; sometimes reusing them
        proc = subprocess.Popen(
            [*DOIT, "run", "target:main"],
            cwd=project.root,
            env=project.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.1, 0.8))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        for run_json in (project.state_root / "runs").glob("*/run.json"):
            RunRecord.from_dict(orjson.loads(run_json.read_bytes()), str(run_json))
        for status in (project.state_root / "runs").glob("*/jobs/*/status.json"):
            orjson.loads(status.read_bytes())
    assert kills >= 8, f"only {kills} runs were killed mid-flight; widen the delays"
    listing = project.pikaci("list")
    assert listing.returncode == 0
    assert "warning" not in listing.stderr
    assert len(listing.stdout.splitlines()) == len(project.run_ids())
