"""What the `remote_ssh` runtimes share: the builder's connection, the snapshot publish (logged
and accounted in the run record), streamed output and the safe unpacking of pulled files."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from pathlib import Path
from typing import Callable, Iterator

from pikaci.builder.connect import connect
from pikaci.builder.layout import RemoteLayout
from pikaci.builder.snapshots import PublishResult, hold_snapshot, publish_snapshot, snapshot_upload
from pikaci.builder.transport import Builder, Transport, TransportError
from pikaci.payloads.builder_nix import add_roots
from pikaci.plan import execute_task
from pikaci.runtimes.base import JobContext

Log = Callable[[str], None]


def require_builder(ctx: JobContext) -> Builder:
    if ctx.builder is None:
        raise TransportError(f"lane `{ctx.lane.id}` runs on a builder but none is configured")
    return ctx.builder


def open_transport(ctx: JobContext, builder: Builder) -> Transport:
    return connect(builder, ctx.host_log.note)


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
    node = execute_task(ctx.lane.id)
    ctx.record_upload(snapshot_upload(host, ctx.snapshot_id, node, published))
    return published


@contextlib.contextmanager
def leased_snapshot(ctx: JobContext, transport: Transport, layout: RemoteLayout) -> Iterator[str]:
    """The lane's snapshot on the builder, leased and then published (so GC cannot remove it
    between publish and use), held while the block runs; yields its directory there."""
    lease = hold_snapshot(transport, layout, ctx.snapshot_id, ctx.run_id, log=ctx.host_log.note)
    with lease as snapshot:
        publish_lane_snapshot(ctx, transport, layout)
        root_payloads(ctx, transport, layout)
        yield snapshot


def root_payloads(ctx: JobContext, transport: Transport, layout: RemoteLayout) -> None:
    """The payloads the lane reads from the builder's store get GC roots in its run's directory
    there, so a `nix-collect-garbage` on the builder cannot take them during the lane (copied
    closures have no other root)."""
    roots = [
        (f"{layout.gcroots_dir(ctx.run_id)}/{output.node_id}", str(output.store_path))
        for output in ctx.payloads
        if output.on_builder
    ]
    if not roots:
        return
    failed = add_roots(transport, roots, "root payloads")
    if failed:
        ctx.host_log.note(
            f"warning: the payloads have no GC root on {transport.builder.host} ({failed}); "
            "a garbage collection there during the lane would remove them"
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
