"""Lanes of a run execute two at a time by default (PIKACI_MAX_CONCURRENT_EXECUTES, as
upstream), here on the loopback builder's real Incus: they overlap, share the connection and the
snapshot upload, and an interrupt while two run leaves nothing behind."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import List

from pikaci.incus.commands import instance_name
from tests.fixtures.faults import processes_mentioning
from tests.fixtures.incus import Incus, most_lanes_at_once
from tests.fixtures.projects import LaneSpec, doit_until_printed
from tests.fixtures.sshd import USER

SLEEP_SECS = 3
STARTED = ("[s0] started", "[s1] started")


def sleepers(count: int, command: str = f"echo started; sleep {SLEEP_SECS}") -> List[LaneSpec]:
    return [
        LaneSpec(f"s{index}", command, placement="remote_ssh", runtime="incus")
        for index in range(count)
    ]


def test_four_lanes_run_two_at_a_time_by_default(make_project, incus_builder, incus: Incus):
    project = make_project(sleepers(4))
    started = time.monotonic()
    done = project.doit("run", "target:main", env=incus_builder)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = project.latest_run()["jobs"]
    assert [job["status"] for job in jobs] == ["passed"] * 4  # type: ignore[index]
    assert most_lanes_at_once(jobs) == 2  # type: ignore[arg-type]
    # the snapshot went up once, whichever lane came first
    logs = [Path(str(job["host_log_path"])).read_text() for job in jobs]  # type: ignore[index]
    assert sum("published remote snapshot" in log for log in logs) == 1, logs
    assert elapsed < 4 * SLEEP_SECS + 30
    for line in ("[s0] started", "[s1] started", "[s2] started", "[s3] started"):
        assert line in done.stdout


def test_the_setting_and_doit_n_choose_how_many(make_project, incus_builder, incus: Incus):
    project = make_project(sleepers(3, "sleep 1"))
    done = project.doit(
        "run", "target:main", env={**incus_builder, "PIKACI_MAX_CONCURRENT_EXECUTES": "3"}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert most_lanes_at_once(project.latest_run()["jobs"]) == 3  # type: ignore[arg-type]
    project.doit("forget", "--all")
    done = project.doit("run", "-n", "1", "target:main", env=incus_builder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert most_lanes_at_once(project.latest_run()["jobs"]) == 1  # type: ignore[arg-type]


def test_a_bad_setting_is_one_line_naming_it(make_project) -> None:
    project = make_project([LaneSpec("a", "true")])
    done = project.doit("run", "lane:a", env={"PIKACI_MAX_CONCURRENT_EXECUTES": "many"})
    assert done.returncode != 0
    assert "PIKACI_MAX_CONCURRENT_EXECUTES: expected a whole number from 1 to 64, got 'many'" in (
        done.stdout + done.stderr
    )
    assert "Traceback" not in done.stdout + done.stderr


def test_sigint_then_sigterm_during_two_lanes_leaves_nothing(
    make_project, incus_builder, incus: Incus
):
    project = make_project(sleepers(2, "echo started; sleep 60"))
    proc, seen = doit_until_printed(project, incus_builder, "target:main", *STARTED)
    assert all(any(marker in line for line in seen) for marker in STARTED), "both lanes run"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode in (130, 143, 128 + signal.SIGTERM)
    record = project.latest_run()
    names = {instance_name(str(record["run_id"]), str(job["id"])) for job in record["jobs"]}
    deadline = time.monotonic() + 60
    while names & set(incus.instances()):
        assert time.monotonic() < deadline, f"instances left: {names & set(incus.instances())}"
        time.sleep(0.5)
    work = incus_builder["PIKACI_BUILDER_WORK_DIR"]
    while processes_mentioning(work, user=USER) or processes_mentioning(
        "pikaci-incus-run", user=USER
    ):
        assert time.monotonic() < deadline, processes_mentioning(work, user=USER)
        time.sleep(0.5)
    for job in project.latest_run()["jobs"]:
        assert job["status"] == "failed", job
        assert "interrupted by SIGINT" in str(job["message"])


def test_two_lanes_failing_at_once_both_clean_up(make_project, incus_builder, incus: Incus):
    project = make_project(sleepers(2, "sleep 1; echo failing; exit 3"))
    done = project.doit("run", "--continue", "target:main", env=incus_builder)
    assert done.returncode != 0
    record = project.latest_run()
    jobs = record["jobs"]
    assert [(job["status"], job["exit_code"]) for job in jobs] == [("failed", 3)] * 2  # type: ignore[index]
    assert most_lanes_at_once(jobs) == 2  # type: ignore[arg-type]
    names = {instance_name(str(record["run_id"]), str(job["id"])) for job in jobs}  # type: ignore[index]
    assert not names & set(incus.instances())
