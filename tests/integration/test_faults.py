"""Fault injection on real lanes: `doit run` killed with SIGKILL or SIGTERM at moments spread
over a whole run, then every record must read, the run be marked, nothing be left behind and
the next run pass (tests/fixtures/faults.py); then two runs at once, a full disk, a builder
whose sshd dies and an incusd restart (tests/fixtures/fault_scenarios.py).
`bench/fault_injection.py` runs the same trials in the hundreds and writes the figures."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.fault_scenarios import (
    CONCURRENT_LANES,
    DISK_FILL_LANE,
    INCUSD_LANE,
    SMALL_DISK,
    concurrent_trial,
    disk_full_trial,
    incusd_restart_trial,
    sshd_cut_lane,
    sshd_cut_trial,
)
from tests.fixtures.faults import Harness, processes_mentioning, run_trials
from tests.fixtures.projects import LaneSpec
from tests.fixtures.sshd import USER, running_sshd
from tests.fixtures.support import require_component

pytestmark = pytest.mark.faults

SIGNALS = [signal.SIGKILL, signal.SIGTERM]
TRIALS = 3  # per signal and case here; the benchmark runs many more


def failures(trials):
    found = [trial.to_dict() for trial in trials if trial.problems]
    for item in found:
        print(item)
    return found


def test_a_killed_local_sandbox_run_leaves_a_clean_state(make_staged_project):
    project = make_staged_project(
        {"run-check": "cat /staged/linux-rust/workspace-deps/share/inputs/hello.txt; sleep 1\n"},
        {
            "main": [
                LaneSpec(
                    "check",
                    "/staged/linux-rust/workspace-build/bin/run-check",
                    runtime="bubblewrap",
                )
            ]
        },
    )
    harness = Harness("local_sandbox", project)
    span = harness.duration() * 1.1
    trials = run_trials(harness, TRIALS, seed=11, signals=SIGNALS, span=span)
    assert failures(trials) == []
    assert {trial.phase for trial in trials} - {"after"}  # kills landed inside the run


def test_a_killed_remote_sandbox_run_leaves_a_clean_state(make_project, remote_builder_env):
    lanes = [
        LaneSpec("a", "echo on the builder; sleep 1", placement="remote_ssh", runtime="bubblewrap"),
        LaneSpec("b", "true", placement="remote_ssh", runtime="bubblewrap"),
    ]
    project = make_project(lanes)
    work = remote_builder_env["PIKACI_BUILDER_WORK_DIR"]
    env = {**project.env, **remote_builder_env}
    harness = Harness(
        "remote_sandbox",
        project,
        env,
        leftovers=lambda: processes_mentioning(work, user=USER),
        remote_root=Path(work),
    )
    span = harness.duration() * 1.1
    trials = run_trials(harness, TRIALS, seed=12, signals=SIGNALS, span=span)
    assert failures(trials) == []


def test_a_killed_remote_incus_run_leaves_a_clean_state(make_project, incus_builder, incus):
    project = make_project(
        [LaneSpec("a", "echo in the guest; sleep 1", placement="remote_ssh", runtime="incus")]
    )
    work = incus_builder["PIKACI_BUILDER_WORK_DIR"]
    env = {**project.env, **incus_builder}
    harness = Harness(
        "remote_incus",
        project,
        env,
        leftovers=lambda: incus.leaked() + processes_mentioning(work, user=USER),
        remote_root=Path(work),
    )
    span = harness.duration() * 1.1
    trials = run_trials(harness, TRIALS, seed=13, signals=SIGNALS, span=span)
    assert failures(trials) == []


def test_an_incusd_restart_during_a_lane_leaves_records_marked_and_nothing_behind(
    make_project, incus_builder, incus
):
    project = make_project([INCUSD_LANE])
    env = {**project.env, **incus_builder}
    work = incus_builder["PIKACI_BUILDER_WORK_DIR"]
    assert failures([incusd_restart_trial(project, env, incus, work)]) == []


def test_two_doit_processes_on_one_state_root_both_finish_and_keep_their_records(make_project):
    project = make_project(CONCURRENT_LANES)
    assert failures([concurrent_trial(project) for _ in range(3)]) == []


def test_a_full_disk_under_the_state_root_fails_the_run_and_the_next_one_passes(
    make_project, tmp_path
):
    require_component(os.geteuid() == 0, "mounting a small tmpfs for the state root needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(small)], check=True
    )
    try:
        project = make_project([DISK_FILL_LANE])
        assert failures([disk_full_trial(project, small)]) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


@pytest.mark.parametrize("moment", ["upload", "execute"])
def test_a_builder_whose_sshd_dies_mid_run_fails_the_run_and_leaves_nothing(make_project, moment):
    require_component(os.geteuid() == 0, "the loopback builder needs root")
    with running_sshd() as server:  # its own: the suite's shared builder must live on
        project = make_project([sshd_cut_lane("first")])
        assert failures([sshd_cut_trial(project, server, moment)]) == []
