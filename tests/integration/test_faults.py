"""Fault injection on real lanes: `doit run` killed with SIGKILL or SIGTERM at moments spread
over a whole run, then every record must read, the run be marked, nothing be left behind and
the next run pass (tests/fixtures/faults.py). `bench/fault_injection.py` runs the same trials
in the hundreds and writes the figures."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.fixtures.faults import Harness, processes_mentioning, run_trials
from tests.fixtures.projects import LaneSpec
from tests.fixtures.sshd import USER
from tests.fixtures.support import DOIT

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


def test_two_doit_processes_on_one_state_root_both_finish_and_keep_their_records(make_project):
    project = make_project([LaneSpec(f"l{i}", "sleep 0.2") for i in range(4)])
    for _ in range(3):
        project.doit("forget", "--all")
        procs = [
            subprocess.Popen(
                [*DOIT, "run", "target:main"],
                cwd=project.root,
                env=project.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        codes = [proc.wait(timeout=120) for proc in procs]
        assert codes == [0, 0], [proc.stderr.read() for proc in procs if proc.stderr]
    listing = project.pikaci("list")
    assert listing.returncode == 0 and "warning" not in listing.stderr
    assert len(listing.stdout.splitlines()) == len(project.run_ids()) == 6
