"""Fault injection on real lanes: `doit run` killed with SIGKILL or SIGTERM at moments spread
over a whole run, then every record must read, the run be marked, nothing be left behind and
the next run pass (tests/fixtures/faults.py). `bench/fault_injection.py` runs the same trials
in the hundreds and writes the figures."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pikaci.store import StateRoot, list_runs
from tests.fixtures.faults import (
    Harness,
    processes_mentioning,
    released,
    run_trials,
    temp_dirs,
)
from tests.fixtures.projects import LaneSpec
from tests.fixtures.sshd import USER, running_sshd
from tests.fixtures.support import require_component

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
        procs = [project.start_doit("run", "target:main") for _ in range(2)]
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outputs
    listing = project.pikaci("list")
    assert listing.returncode == 0 and "warning" not in listing.stderr
    assert len(listing.stdout.splitlines()) == len(project.run_ids()) == 6


def test_a_full_disk_under_the_state_root_fails_the_run_and_the_next_one_passes(
    make_project, tmp_path
):
    require_component(os.geteuid() == 0, "mounting a small tmpfs for the state root needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        project = make_project(
            [LaneSpec("fill", 'head -c "$(cat size)" /dev/zero > "$ARTIFACTS/fill.bin"; echo done')]
        )
        project.write("size", "4000000\n")
        project.commit()
        state = StateRoot(small / "state")
        env = {**project.env, "PIKACI_STATE_ROOT": str(state.root)}
        full = project.doit("run", "target:main", env=env)
        assert full.returncode != 0
        assert list_runs(state).problems == []  # every record still reads
        (run_id,) = [p.name for p in state.runs_dir.iterdir() if not p.name.startswith(".")]
        assert released(state.runs_dir / run_id)  # marked: closed, or shown interrupted
        assert temp_dirs(state.root) == []
        for fill in state.runs_dir.glob("*/jobs/*/artifacts/fill.bin"):
            fill.unlink()  # the operator frees space
        project.write("size", "1000\n")
        project.commit()
        again = project.doit("run", "target:main", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert list_runs(state).problems == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def _wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the moment to inject the fault never came"
        time.sleep(0.02)


@pytest.mark.parametrize("moment", ["upload", "execute"])
def test_a_builder_whose_sshd_dies_mid_run_fails_the_run_and_leaves_nothing(make_project, moment):
    require_component(os.geteuid() == 0, "the loopback builder needs root")
    tag = f"pikaci-cut-{uuid.uuid4().hex[:12]}"
    with running_sshd() as server:  # its own: the suite's shared builder must live on
        work = server.work_dir()
        builder = {
            "PIKACI_BUILDER": server.host,
            "PIKACI_BUILDER_SSH_CONFIG": str(server.ssh_config),
            "PIKACI_BUILDER_WORK_DIR": str(work),
        }
        lane = LaneSpec(
            "r", f'sleep "$(cat delay)" # {tag}', placement="remote_ssh", runtime="host_process"
        )
        project = make_project([lane])
        project.write("delay", "30\n")
        if moment == "upload":
            (project.root / "payload.bin").write_bytes(os.urandom(96 << 20))  # a long stream
        project.commit()
        env = {**project.env, **builder}
        proc = project.start_doit("run", "target:main", env=env)
        if moment == "upload":
            _wait_until(lambda: bool(list(work.glob("snapshots/*/.tmp-*"))))
        else:
            _wait_until(lambda: bool(processes_mentioning(tag, user=USER)))
        server.cut()
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode != 0, output
        state = StateRoot(project.state_root)
        assert list_runs(state).problems == []
        run = project.latest_run()
        assert run["status"] == "failed", output
        (job,) = run["jobs"]  # type: ignore[misc]
        assert job["status"] == "failed" and job["message"], job
        assert released(state.runs_dir / str(run["run_id"]))
        deadline = time.monotonic() + 20
        while processes_mentioning(str(work), user=USER) or processes_mentioning(tag):
            assert time.monotonic() < deadline, processes_mentioning(str(work), user=USER)
            time.sleep(0.2)
        assert temp_dirs(work) == []
        server.restart()
        project.write("delay", "0\n")
        project.commit()
        again = project.doit("run", "target:main", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
