"""What the `remote_ssh` runtimes share: the builder's connection, the snapshot publish (logged
and accounted in the run record), streamed output and the safe unpacking of pulled files."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from pikaci.model import UploadRecord
from pikaci.remote import PublishResult, RemoteLayout, hold_snapshot, publish_snapshot
from pikaci.runtimes.base import JobContext
from pikaci.transport import Builder, Transport, TransportError

Log = Callable[[str], None]


def require_builder(ctx: JobContext) -> Builder:
    if ctx.builder is None:
        raise TransportError(f"lane `{ctx.lane.id}` runs on a builder but none is configured")
    return ctx.builder


def connect(builder: Builder, log: Callable[[str], None]) -> Transport:
    """A transport over the builder's shared connection. Never closed by callers: the master
    outlives a task (ControlPersist), so later tasks, lanes and runs reuse it, and closing it
    would cut the sessions of other processes riding on it."""
    return Transport(builder, control_dir(), log)


def open_transport(ctx: JobContext, builder: Builder) -> Transport:
    return connect(builder, ctx.host_log.note)


def control_dir() -> Path:
    """Where ControlMaster sockets live: short (unix socket paths stop near 108 bytes), private,
    and shared by every run of this user so one connection serves them all."""
    path = Path(tempfile.gettempdir()) / f"pikaci-ssh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise TransportError(f"{path} must be a directory only you can use (mode 700)")
    return path


def publish_lane_snapshot(
    ctx: JobContext, transport: Transport, layout: RemoteLayout
) -> PublishResult:
    """Publish the lane's snapshot on the builder (once per content), say so in the host log and
    account the transfer (or its absence) in the run record."""
    log = ctx.host_log.note
    host = transport.builder.host
    published = publish_snapshot(transport, layout, ctx.snapshot_dir, ctx.snapshot_id, log)
    log(
        f"snapshot {ctx.snapshot_id[:12]} on {host}: "
        + (
            f"uploaded {published.bytes_sent} bytes in {published.seconds:.2f}s"
            if published.uploaded
            else "already there"
        )
    )
    ctx.record_upload(snapshot_upload(host, ctx.snapshot_id, f"execute:{ctx.lane.id}", published))
    return published


@contextlib.contextmanager
def leased_snapshot(ctx: JobContext, transport: Transport, layout: RemoteLayout) -> Iterator[str]:
    """The lane's snapshot on the builder, leased and then published (so GC cannot remove it
    between publish and use), held while the block runs; yields its directory there."""
    lease = hold_snapshot(transport, layout, ctx.snapshot_id, ctx.run_id, log=ctx.host_log.note)
    with lease as snapshot:
        publish_lane_snapshot(ctx, transport, layout)
        yield snapshot


def snapshot_upload(
    host: str, tree_id: str, node_id: str, published: PublishResult
) -> UploadRecord:
    """The run record's account of one snapshot publish (or of finding it already there)."""
    return UploadRecord(
        kind="snapshot",
        builder=host,
        subject=tree_id,
        node_id=node_id,
        paths=1 if published.uploaded else 0,
        bytes=published.bytes_sent,
        seconds=round(published.seconds, 3),
        skipped=not published.uploaded,
    )


def streamer(ctx: JobContext, log_prefix: str = "") -> Callable[[str], None]:
    """A remote output line, raw into `host.log` (after `log_prefix`) and to the console."""
    prefix = f"[{ctx.lane.id}] "

    def emit(line: str) -> None:
        ctx.host_log.write_raw((log_prefix + line + "\n").encode("utf-8", "replace"))
        ctx.console(prefix + line)

    return emit


def extract_archive(archive: bytes, destination: Path, log: Log) -> None:
    """Unpack a pulled tar: regular files and directories inside `destination` only; links,
    devices and anything reaching outside are reported and skipped."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar.getmembers():
            name = os.path.normpath(member.name)
            if name in (".", "") or name.startswith(("..", "/")):
                continue
            target = destination / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                source = tar.extractfile(member)
                if source is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.exists():
                    target.unlink()
                with open(target, "xb") as out:
                    out.write(source.read())
            else:
                log(f"collect: skipped artifact `{name}`: not a regular file")
