"""`pikaci gc-remote` and the `gc_remote` doit task against a real sshd on 127.0.0.1.

The builder is this machine, so the tests set up and inspect the remote work dir directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List

import orjson
import pytest

from pikaci.builder.gc import human_bytes
from pikaci.builder.layout import RemoteLayout
from pikaci.builder.snapshots import hold_snapshot, publish_snapshot
from pikaci.builder.transport import Builder, Transport
from tests.fixtures.builder import RUN_IDS, du_bytes, make_remote_run, make_snapshot
from tests.fixtures.projects import LaneSpec, Project, executed_tasks
from tests.fixtures.sshd import free_port
from tests.fixtures.support import require_component

GC_KEYS = {
    "removed_runs",
    "removed_snapshots",
    "kept_in_use",
    "freed_bytes",
    "removed_temps",
    "kept_snapshots",
}


def _nothing(line: str) -> None:
    pass


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """TMPDIR for the commands under test: their ControlMaster sockets land in
    `<dir>/pikaci-ssh-<uid>/`, which must be short; masters left there are stopped at the end."""
    require_component(shutil.which("ssh") is not None, "openssh-client is not installed")
    path = Path(tempfile.mkdtemp(prefix="pikaci-gc-", dir="/tmp"))
    try:
        yield path
    finally:
        sockets = path / f"pikaci-ssh-{os.getuid()}"
        for sock in sockets.iterdir() if sockets.is_dir() else []:
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "pikaci-gc-test"],
                capture_output=True,
                timeout=10,
                check=False,
            )
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def builder_env(remote_builder_env: Dict[str, str], short_tmp: Path) -> Dict[str, str]:
    return {**remote_builder_env, "TMPDIR": str(short_tmp)}


@pytest.fixture
def unreachable_env(tmp_path: Path, short_tmp: Path) -> Dict[str, str]:
    """A builder alias on a loopback port nothing listens on."""
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host nowhere\n  HostName 127.0.0.1\n  Port {free_port()}\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
    )
    return {
        "PIKACI_BUILDER": "nowhere",
        "PIKACI_BUILDER_SSH_CONFIG": str(config),
        "PIKACI_BUILDER_WORK_DIR": "/tmp/pikaci-nowhere",
        "TMPDIR": str(short_tmp),
    }


@pytest.fixture
def project(make_project) -> Project:  # type: ignore[no-untyped-def]
    project: Project = make_project([LaneSpec("a", "echo local-lane")])
    return project


def publish(tmp_path: Path, transport: Transport, layout: RemoteLayout, names: str) -> List[str]:
    """One published snapshot per letter of `names`; their tree ids."""
    trees = []
    for name in names:
        local, tree_id = make_snapshot(tmp_path / name, name)
        publish_snapshot(transport, layout, local, tree_id, _nothing)
        trees.append(tree_id)
    return trees


def no_run_records(project: Project) -> bool:
    runs = project.state_root / "runs"
    return not runs.exists() or not any(runs.iterdir())


def test_gc_remote_frees_old_runs_and_keeps_what_a_live_lease_holds(
    tmp_path: Path,
    project: Project,
    remote_transport: Transport,
    remote_builder: Builder,
    remote_layout: RemoteLayout,
    builder_env: Dict[str, str],
) -> None:
    a, b, c, d = publish(tmp_path, remote_transport, remote_layout, "abcd")
    r0, r1, r2, r3, r4 = RUN_IDS[:5]
    for run_id, tree_id in [(r1, a), (r2, b), (r3, c), (r4, c)]:
        make_remote_run(remote_transport, remote_layout, run_id, tree_id)
    stale_temp = (
        f"{remote_layout.snapshot_root(c)}/.tmp-1-deadbeef"  # a killed publisher's leftovers
    )
    remote_transport.run("plant", f"mkdir -p {stale_temp}/x")
    doomed = [remote_layout.run_dir(r1), remote_layout.run_dir(r2), stale_temp]
    doomed += [remote_layout.snapshot_root(a), remote_layout.snapshot_root(b)]
    freed = du_bytes(*doomed)

    # a lane of the oldest run is still running on snapshot d
    with hold_snapshot(remote_transport, remote_layout, d, r0):
        result = project.pikaci(
            "gc-remote", "--keep-runs", "2", "--keep-snapshots-days", "0", env=builder_env
        )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"removed run {r1}", f"removed run {r2}"]
    assert sorted(lines[2:4]) == sorted([f"removed snapshot {a}", f"removed snapshot {b}"])
    assert lines[4:] == [
        f"removed temp {c}/.tmp-1-deadbeef",
        f"kept in use: runs/{r0}",
        f"kept in use: snapshots/{d}",
        f"kept snapshot {c}",
        f"remote gc on {remote_builder.host} ({remote_builder.remote_work_dir}): removed 2 run(s), "
        f"2 snapshot(s), 1 temp dir(s); 2 kept in use; "
        f"freed {human_bytes(freed)} ({freed} bytes)",
    ]
    assert "KiB" in lines[-1]
    assert not any(Path(path).exists() for path in doomed)
    for kept in (remote_layout.run_dir(r0), remote_layout.run_dir(r3), remote_layout.run_dir(r4)):
        assert Path(kept).is_dir()
    for tree_id in (c, d):
        assert Path(remote_layout.snapshot_dir(tree_id)).is_dir()
    assert no_run_records(project)

    # the lease has ended: its run and then its snapshot go as well
    after = project.pikaci(
        "gc-remote", "--keep-runs", "2", "--keep-snapshots-days", "0", env=builder_env
    )
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines()[:2] == [f"removed run {r0}", f"removed snapshot {d}"]
    assert "0 kept in use" in after.stdout.splitlines()[-1]
    assert not Path(remote_layout.snapshot_root(d)).exists()


def test_gc_remote_json_and_default_retention(
    tmp_path: Path,
    project: Project,
    remote_transport: Transport,
    remote_layout: RemoteLayout,
    builder_env: Dict[str, str],
) -> None:
    a, b, unused = publish(tmp_path, remote_transport, remote_layout, "abu")
    r1, r2 = RUN_IDS[1:3]
    make_remote_run(remote_transport, remote_layout, r1, a)
    make_remote_run(remote_transport, remote_layout, r2, b)

    # the defaults keep 20 runs and snapshots used within 2 days: nothing goes
    kept = project.pikaci("gc-remote", "--json", env=builder_env)
    assert kept.returncode == 0, kept.stderr
    data = orjson.loads(kept.stdout)
    assert set(data) == GC_KEYS
    assert data["removed_runs"] == data["removed_snapshots"] == data["removed_temps"] == []
    assert data["freed_bytes"] == 0 and data["kept_in_use"] == []
    assert sorted(data["kept_snapshots"]) == sorted([a, b, unused])

    freed = du_bytes(
        remote_layout.run_dir(r1),
        remote_layout.snapshot_root(a),
        remote_layout.snapshot_root(unused),
    )
    result = project.pikaci(
        "gc-remote", "--keep-runs", "1", "--keep-snapshots-days", "0", "--json", env=builder_env
    )
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["removed_runs"] == [r1]
    assert sorted(data["removed_snapshots"]) == sorted([a, unused])
    assert data["kept_snapshots"] == [b]
    assert data["kept_in_use"] == data["removed_temps"] == []
    assert data["freed_bytes"] == freed
    assert Path(remote_layout.run_dir(r2)).is_dir()


def test_doit_gc_remote_task_collects_without_a_run_record(
    tmp_path: Path,
    project: Project,
    remote_transport: Transport,
    remote_builder: Builder,
    remote_layout: RemoteLayout,
    builder_env: Dict[str, str],
) -> None:
    a, b = publish(tmp_path, remote_transport, remote_layout, "ab")
    r1, r2, r3 = RUN_IDS[1:4]
    make_remote_run(remote_transport, remote_layout, r1, a)
    make_remote_run(remote_transport, remote_layout, r2, b)

    listing = project.doit("list", env=builder_env)
    assert listing.returncode == 0, listing.stderr
    assert any(
        line.startswith("gc_remote ") and "old runs" in line for line in listing.stdout.splitlines()
    )

    # a lease held elsewhere keeps r2 and snapshot b while the task runs
    with hold_snapshot(remote_transport, remote_layout, b, r2):
        result = project.doit(
            "gc_remote", "--keep-runs", "0", "--keep-snapshots-days", "0", env=builder_env
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert executed_tasks(result.stdout) == ["gc_remote"]
    assert f"removed run {r1}" in result.stdout
    assert f"removed snapshot {a}" in result.stdout
    assert f"kept in use: runs/{r2}" in result.stdout
    assert f"remote gc on {remote_builder.host} " in result.stdout
    assert "pikaci: run" not in result.stdout + result.stderr
    assert no_run_records(project)
    assert Path(remote_layout.run_dir(r2)).is_dir() and not Path(remote_layout.run_dir(r1)).exists()

    # through the console script's doit passthrough; always runs (never up to date)
    again = project.pikaci("doit", "gc_remote", "--keep-runs", "1", env=builder_env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert executed_tasks(again.stdout) == ["gc_remote"]
    assert "removed 0 run(s)" in again.stdout
    dropped = project.pikaci("doit", "gc_remote", "--keep-runs=0", env=builder_env)
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    assert f"removed run {r2}" in dropped.stdout
    assert no_run_records(project)

    # plain `doit` runs the lanes and never the builder's GC
    make_remote_run(remote_transport, remote_layout, r3, b)
    plain = project.doit(env=builder_env)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "gc_remote" not in executed_tasks(plain.stdout)
    assert "execute:a" in executed_tasks(plain.stdout)
    assert Path(remote_layout.run_dir(r3)).is_dir()
    assert len(project.run_ids()) == 1


def test_an_unreachable_builder_is_one_error_line(
    project: Project, unreachable_env: Dict[str, str]
) -> None:
    env = unreachable_env
    result = project.pikaci("gc-remote", env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("pikaci: error: remote gc: connection to nowhere failed")
    assert "Connection refused" in errors[0]

    task = project.doit("gc_remote", env=env)
    output = task.stdout + task.stderr
    assert task.returncode != 0
    assert "remote gc: connection to nowhere failed" in output
    assert "Traceback" not in output
    assert no_run_records(project)

    relative = project.pikaci("gc-remote", env={**env, "PIKACI_BUILDER_WORK_DIR": "relative"})
    assert relative.returncode == 1
    assert relative.stderr.startswith("pikaci: error: remote work dir must be an absolute")
    assert len(relative.stderr.splitlines()) == 1


def test_negative_retention_is_a_usage_error(
    project: Project, unreachable_env: Dict[str, str], short_tmp: Path
) -> None:
    env = unreachable_env
    for flag, value in [
        ("--keep-runs", "-1"),
        ("--keep-runs", "many"),
        ("--keep-snapshots-days", "-0.5"),
        ("--keep-snapshots-days", "nan"),
    ]:
        result = project.pikaci("gc-remote", flag, value, env=env)
        assert result.returncode == 2, (flag, value, result.stderr)
        assert result.stdout == ""
        assert result.stderr.splitlines()[-1].startswith(
            f"pikaci gc-remote: error: argument {flag}: expected zero or a positive"
        )
        assert "Traceback" not in result.stderr

    task = project.doit("gc_remote", "--keep-runs", "-1", env=env)
    output = task.stdout + task.stderr
    assert task.returncode != 0
    assert "--keep-runs: expected zero or a positive number of runs, got -1" in output
    assert "Traceback" not in output
    # refused before any connection: not even the control dir was made
    assert not (short_tmp / f"pikaci-ssh-{os.getuid()}").exists()
