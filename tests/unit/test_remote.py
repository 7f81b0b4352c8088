"""`pikaci.builder` (layout, snapshots, gc) against a real sshd: snapshot publishing, leases and remote GC.

The builder is this machine, so the tests look at the remote work dir directly.
"""

from __future__ import annotations

import filecmp
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import orjson
import pytest

import pikaci.builder.snapshots
from pikaci.builder.gc import human_bytes, remote_gc
from pikaci.builder.layout import RemoteError, RemoteLayout
from pikaci.builder.snapshots import TarStream, hold_snapshot, publish_snapshot
from pikaci.builder.transport import Builder, RemoteCommandError, Transport
from pikaci.snapshot import SNAPSHOT_METADATA_FILE
from tests.fixtures.builder import (
    RUN_IDS,
    TransportLog,
    du_bytes,
    make_remote_run,
    make_snapshot,
)
from tests.fixtures.sshd import Sshd, local_ssh_children
from tests.fixtures.support import REPO_ROOT, in_thread, wait_for


def same_tree(left: Path, right: Path) -> bool:
    compared = filecmp.dircmp(left, right)
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, compared.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(left / sub, right / sub) for sub in compared.common_dirs)


def temp_dirs(layout: RemoteLayout, tree_id: str) -> List[str]:
    root = Path(layout.snapshot_root(tree_id))
    return (
        sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))
        if root.is_dir()
        else []
    )


# -- layout -----------------------------------------------------------------------------------


def test_layout_paths_are_scoped_and_validated() -> None:
    layout = RemoteLayout("/var/tmp/pikaci-prepared-output")
    run = RUN_IDS[1]
    assert layout.snapshot_dir("abc") == "/var/tmp/pikaci-prepared-output/snapshots/abc/snapshot"
    assert layout.artifacts_dir(run, "lane-1") == (
        f"/var/tmp/pikaci-prepared-output/runs/{run}/jobs/lane-1/artifacts"
    )
    assert layout.locks_dir == "/var/tmp/pikaci-prepared-output/locks"
    for bad in ("../x", "a/b", ".hidden", "", "x y"):
        with pytest.raises(RemoteError):
            layout.snapshot_dir(bad)
    with pytest.raises(RemoteError):
        layout.run_dir("latest")
    with pytest.raises(RemoteError):
        RemoteLayout("relative/dir")
    assert RemoteLayout.for_builder(Builder(host="h", remote_work_dir="/w/")).work_dir == "/w"


# -- publishing -------------------------------------------------------------------------------


def test_publish_then_reuse(
    tmp_path: Path,
    remote_transport: Transport,
    remote_layout: RemoteLayout,
    transport_log: TransportLog,
) -> None:
    local, tree_id = make_snapshot(tmp_path, "a")
    before = remote_transport.round_trips
    first = publish_snapshot(remote_transport, remote_layout, local, tree_id, transport_log)
    after_first = remote_transport.round_trips
    second = publish_snapshot(remote_transport, remote_layout, local, tree_id, transport_log)

    dest = Path(remote_layout.snapshot_dir(tree_id))
    assert first.remote_path == second.remote_path == str(dest)
    assert first.uploaded and first.bytes_sent > 20 * 2048 and first.seconds > 0
    assert (after_first - before, remote_transport.round_trips - after_first) == (2, 1)
    assert not second.uploaded and second.bytes_sent == 0
    assert same_tree(local, dest)
    assert os.access(dest / "bin" / "tool", os.X_OK)
    assert temp_dirs(remote_layout, tree_id) == []
    assert any(line.startswith("remote snapshot already available at") for line in transport_log)


def test_a_marker_with_another_hash_is_a_hard_error(
    tmp_path: Path,
    remote_transport: Transport,
    remote_layout: RemoteLayout,
    transport_log: TransportLog,
) -> None:
    local, tree_id = make_snapshot(tmp_path, "a")
    publish_snapshot(remote_transport, remote_layout, local, tree_id, transport_log)
    marker = Path(remote_layout.snapshot_dir(tree_id)) / SNAPSHOT_METADATA_FILE
    data = orjson.loads(marker.read_bytes())
    data["content_hash"] = "f" * 64
    marker.write_bytes(orjson.dumps(data))

    with pytest.raises(RemoteError) as mismatch:
        publish_snapshot(remote_transport, remote_layout, local, tree_id, transport_log)

    message = str(mismatch.value)
    assert "remote snapshot hash mismatch" in message
    assert "f" * 64 in message and tree_id.split("-")[0] in message
    assert "\n" not in message


def test_a_destination_without_a_marker_is_refused(
    tmp_path: Path,
    remote_transport: Transport,
    remote_layout: RemoteLayout,
    transport_log: TransportLog,
) -> None:
    local, tree_id = make_snapshot(tmp_path, "a")
    remote_transport.run("plant", f"mkdir -p {remote_layout.snapshot_dir(tree_id)}")
    with pytest.raises(RemoteError, match=r"exists without pikaci-snapshot\.json"):
        publish_snapshot(remote_transport, remote_layout, local, tree_id, transport_log)


_PUBLISHER = """
import json, sys, tempfile, time
from pathlib import Path
from pikaci.builder.layout import RemoteLayout
from pikaci.builder.snapshots import publish_snapshot
from pikaci.builder.transport import Builder, Transport
args = json.loads(sys.argv[1])
builder = Builder(host=args["host"], ssh_config=Path(args["config"]), remote_work_dir=args["work"])
with tempfile.TemporaryDirectory(prefix="pikaci-cm-", dir="/tmp") as control:
    with Transport(builder, Path(control), lambda line: None) as transport:
        transport.run("warm up", "true")
        while not Path(args["go"]).exists():
            time.sleep(0.002)
        layout = RemoteLayout(args["work"])
        result = publish_snapshot(
            transport, layout, Path(args["local"]), args["tree"], lambda line: None
        )
print(json.dumps({"uploaded": result.uploaded, "path": result.remote_path}))
"""


def test_concurrent_publishers_never_expose_a_partial_tree(
    tmp_path: Path, sshd: Sshd, remote_builder: Builder, remote_layout: RemoteLayout
) -> None:
    local, tree_id = make_snapshot(tmp_path, "big", files=300, size=16384)
    dest = Path(remote_layout.snapshot_dir(tree_id))
    expected = sorted(str(p.relative_to(local)) for p in local.rglob("*"))
    go = tmp_path / "go"
    observations: List[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if not dest.exists():
                observations.append("absent")
                continue
            found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
            observations.append("complete" if found == expected else f"partial:{len(found)}")

    args = {
        "host": sshd.host,
        "config": str(sshd.ssh_config),
        "work": remote_builder.remote_work_dir,
    }
    args.update({"local": str(local), "tree": tree_id, "go": str(go)})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, json.dumps(args)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    transports = [
        Transport(remote_builder, sshd.control_dir(), lambda line: None) for _ in range(2)
    ]
    for transport in transports:
        transport.run("warm up", "true")
    start = threading.Event()

    def publish(transport: Transport) -> object:
        start.wait()
        return publish_snapshot(transport, remote_layout, local, tree_id, lambda line: None)

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    threads = [in_thread(functools.partial(publish, t)) for t in transports]
    time.sleep(0.5)  # the children are connected and polling for the go file
    go.touch()
    start.set()
    for thread, _ in threads:
        thread.join(60)
    results = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    stop.set()
    watcher.join(10)
    for transport in transports:
        transport.close()

    uploaded = [outcome["result"].uploaded for _, outcome in threads]
    uploaded += [result["uploaded"] for result in results]
    assert all(child.returncode == 0 for child in children)
    assert uploaded.count(True) == 1, uploaded  # one rename won; the others reused it
    assert observations[0] == "absent"
    assert set(observations) <= {"absent", "complete"}, sorted(set(observations))
    assert observations[-1] == "complete"
    assert same_tree(local, dest)
    assert temp_dirs(remote_layout, tree_id) == []


class SlowTar(TarStream):
    """Uploads in 64 KiB steps with a pause, so a test can act in the middle of one."""

    slow_uploads = 1

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.slow = SlowTar.slow_uploads > 0
        SlowTar.slow_uploads -= 1

    def read(self, size: int = -1, /) -> bytes:
        if not self.slow:
            return super().read(size)
        time.sleep(0.03)
        return super().read(min(size, 65536))


def test_a_remote_timeout_mid_upload_leaves_no_partial_destination(
    tmp_path: Path,
    remote_transport: Transport,
    remote_layout: RemoteLayout,
    transport_log: TransportLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local, tree_id = make_snapshot(tmp_path, "slow", files=40, size=65536)
    monkeypatch.setattr(pikaci.builder.snapshots, "TarStream", SlowTar)
    SlowTar.slow_uploads = 1

    with pytest.raises(RemoteCommandError) as timed_out:
        publish_snapshot(
            remote_transport, remote_layout, local, tree_id, transport_log, timeout_secs=0.5
        )

    assert timed_out.value.timed_out
    assert not Path(remote_layout.snapshot_dir(tree_id)).exists()
    assert wait_for(
        lambda: temp_dirs(remote_layout, tree_id) == [], 5
    )  # removed by the upload's trap
    retry = publish_snapshot(remote_transport, remote_layout, local, tree_id, transport_log)
    assert retry.uploaded
    assert same_tree(local, Path(remote_layout.snapshot_dir(tree_id)))


def test_a_connection_killed_mid_upload_is_retried(
    tmp_path: Path,
    remote_transport: Transport,
    remote_layout: RemoteLayout,
    transport_log: TransportLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local, tree_id = make_snapshot(tmp_path, "killed", files=40, size=65536)
    dest = Path(remote_layout.snapshot_dir(tree_id))
    monkeypatch.setattr(pikaci.builder.snapshots, "TarStream", SlowTar)
    SlowTar.slow_uploads = 1
    before = remote_transport.round_trips
    thread, outcome = in_thread(
        lambda: publish_snapshot(remote_transport, remote_layout, local, tree_id, transport_log)
    )

    # once the first upload is half-way into its temp dir, kill our ssh client
    assert wait_for(lambda: bool(temp_dirs(remote_layout, tree_id)), 10)
    assert wait_for(
        lambda: len(list(Path(remote_layout.snapshot_root(tree_id)).rglob("f*"))) > 5, 10
    )
    first_temp = temp_dirs(remote_layout, tree_id)
    assert not dest.exists()
    victims = local_ssh_children("tar -C")
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    thread.join(60)

    result = outcome["result"]
    assert result.uploaded
    assert same_tree(local, dest)
    assert remote_transport.round_trips - before == 3  # check, killed upload, upload
    assert any("lost mid-stream" in line for line in transport_log)
    assert any("restarting the upload" in line for line in transport_log)
    assert wait_for(lambda: temp_dirs(remote_layout, tree_id) == [], 5), first_temp


# -- leases and GC ----------------------------------------------------------------------------


def test_gc_keeps_new_runs_and_leased_snapshots_and_frees_the_rest(
    tmp_path: Path,
    remote_transport: Transport,
    remote_layout: RemoteLayout,
    transport_log: TransportLog,
) -> None:
    trees = {}
    for name in "abcd":
        local, tree_id = make_snapshot(tmp_path / name, name)
        publish_snapshot(remote_transport, remote_layout, local, tree_id, transport_log)
        trees[name] = tree_id
    r0, r1, r2, r3, r4 = RUN_IDS[:5]
    for run_id, name in [(r1, "a"), (r2, "b"), (r3, "c"), (r4, "c")]:
        make_remote_run(remote_transport, remote_layout, run_id, trees[name])
    doomed = [remote_layout.run_dir(r1), remote_layout.run_dir(r2)]
    doomed += [remote_layout.snapshot_root(trees["a"]), remote_layout.snapshot_root(trees["b"])]
    expected_freed = du_bytes(*doomed)

    # a lane of an old run, still running on snapshot d
    with hold_snapshot(
        remote_transport, remote_layout, trees["d"], r0, log=transport_log
    ) as leased:
        assert leased == remote_layout.snapshot_dir(trees["d"])
        before = remote_transport.round_trips
        gc = remote_gc(
            remote_transport, remote_layout, keep_runs=2, keep_snapshots_days=0, log=transport_log
        )
        assert remote_transport.round_trips - before == 1

    assert gc.removed_runs == [r1, r2]
    assert sorted(gc.removed_snapshots) == sorted([trees["a"], trees["b"]])
    assert gc.kept_in_use == [f"runs/{r0}", f"snapshots/{trees['d']}"]
    assert gc.kept_snapshots == [trees["c"]]
    assert gc.freed_bytes == expected_freed
    assert not any(Path(path).exists() for path in doomed)
    for kept in (
        remote_layout.run_dir(r3),
        remote_layout.run_dir(r4),
        remote_layout.snapshot_dir(trees["c"]),
    ):
        assert Path(kept).is_dir()
    assert Path(remote_layout.snapshot_dir(trees["d"]), SNAPSHOT_METADATA_FILE).is_file()
    assert any(line.startswith("remote gc on") for line in transport_log)

    # the lease is gone: its old run and then its snapshot go too
    after = remote_gc(
        remote_transport, remote_layout, keep_runs=2, keep_snapshots_days=0, log=transport_log
    )
    assert after.removed_runs == [r0]
    assert after.removed_snapshots == [trees["d"]]
    assert after.kept_in_use == []


def test_gc_keeps_recent_snapshots_and_one_being_published(
    tmp_path: Path,
    remote_transport: Transport,
    remote_layout: RemoteLayout,
    transport_log: TransportLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recent, recent_id = make_snapshot(tmp_path / "r", "recent")
    publish_snapshot(remote_transport, remote_layout, recent, recent_id, transport_log)
    stale_temp = f"{remote_layout.snapshot_root(recent_id)}/.tmp-1-deadbeef"
    remote_transport.run("a killed publisher's leftovers", f"mkdir -p {stale_temp}/x")
    big, big_id = make_snapshot(tmp_path / "b", "inflight", files=40, size=65536)
    monkeypatch.setattr(pikaci.builder.snapshots, "TarStream", SlowTar)
    SlowTar.slow_uploads = 1
    thread, outcome = in_thread(
        lambda: publish_snapshot(remote_transport, remote_layout, big, big_id, transport_log)
    )
    assert wait_for(lambda: bool(temp_dirs(remote_layout, big_id)), 10)

    gc = remote_gc(
        remote_transport, remote_layout, keep_runs=0, keep_snapshots_days=1, log=transport_log
    )
    thread.join(60)

    assert gc.kept_in_use == [f"snapshots/{big_id}"]
    assert gc.kept_snapshots == [recent_id]  # unreferenced but used within the last day
    assert gc.removed_temps == [f"{recent_id}/.tmp-1-deadbeef"]
    assert gc.removed_snapshots == []
    assert outcome["result"].uploaded
    assert same_tree(big, Path(remote_layout.snapshot_dir(big_id)))
    everything = remote_gc(
        remote_transport, remote_layout, keep_runs=0, keep_snapshots_days=0, log=transport_log
    )
    assert sorted(everything.removed_snapshots) == sorted([recent_id, big_id])


def test_a_lease_ends_with_its_connection(
    tmp_path: Path,
    sshd: Sshd,
    remote_builder: Builder,
    remote_layout: RemoteLayout,
    transport_log: TransportLog,
) -> None:
    local, tree_id = make_snapshot(tmp_path, "leased")
    holder = Transport(remote_builder, sshd.control_dir(), transport_log, retries=0)
    publish_snapshot(holder, remote_layout, local, tree_id, transport_log)
    lease = hold_snapshot(holder, remote_layout, tree_id, RUN_IDS[7], log=transport_log)
    lease.__enter__()
    try:
        other = Transport(remote_builder, sshd.control_dir(), transport_log)
        assert remote_gc(other, remote_layout, 0, 0, transport_log).kept_in_use == [
            f"runs/{RUN_IDS[7]}",
            f"snapshots/{tree_id}",
        ]
        # the orchestrator dies: its ssh clients go, and the builder drops the lease
        for pid in local_ssh_children("pikaci-lease"):
            os.kill(pid, signal.SIGKILL)
        assert wait_for(
            lambda: not remote_gc(other, remote_layout, 0, 0, transport_log).kept_in_use, 10
        )
        assert not Path(remote_layout.snapshot_root(tree_id)).exists()
        other.close()
    finally:
        lease.__exit__(None, None, None)
        holder.close()


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 5 << 20, 3 << 30, 2 << 40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
        "2.0 TiB",
    ]
