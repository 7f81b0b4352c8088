"""`remote_ssh` + `host_process`: the lane command runs directly on a builder over SSH.

On the builder everything a run leaves lives under `<work>/runs/<run>/jobs/<job>/`:
`workspace/` (a writable copy of the published snapshot) and `artifacts/` (`$ARTIFACTS`, reset
before the launch). The snapshot is published content-addressed under `<work>/snapshots/` and
leased for the lane's duration, so remote GC never removes it underneath. The command runs under
a remote-side timeout and dies with the connection; its output streams into `host.log`.
`collect` pulls the artifacts back (regular files and directories only) and removes the
remote workspace.
"""

from __future__ import annotations

import io
import os
import shlex
import stat
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

from pikaci.model import RUN_PASSED, RecordError, TerminalResult
from pikaci.remote import RemoteLayout, hold_snapshot, publish_snapshot
from pikaci.runtimes.base import JobContext, Outcome, write_result
from pikaci.store import read_json_object
from pikaci.transport import Builder, Transport, TransportError

TIMED_OUT = 124


class RemoteHostProcessRuntime:
    def execute(self, ctx: JobContext) -> Outcome:
        log = ctx.host_log.note
        builder = _builder(ctx)
        layout = RemoteLayout.for_builder(builder)
        with _transport(ctx, builder) as transport:
            published = publish_snapshot(transport, layout, ctx.snapshot_dir, ctx.snapshot_id, log)
            log(
                f"snapshot {ctx.snapshot_id[:12]} on {builder.host}: "
                + (
                    f"uploaded {published.bytes_sent} bytes in {published.seconds:.2f}s"
                    if published.uploaded
                    else "already there"
                )
            )
            with hold_snapshot(transport, layout, ctx.snapshot_id, ctx.run_id, log=log) as snapshot:
                job = layout.job_dir(ctx.run_id, ctx.lane.id)
                transport.run(
                    "prepare job directory",
                    f"set -eu; rm -rf {_q(job)}/artifacts {_q(job)}/workspace; "
                    f"mkdir -p {_q(job)}/artifacts; cp -a {_q(snapshot)}/. {_q(job)}/workspace/",
                )
                started = time.monotonic()
                result = transport.run(
                    f"lane {ctx.lane.id}",
                    _lane_script(ctx, job),
                    timeout_secs=ctx.lane.timeout_secs,
                    on_line=_streamer(ctx),
                    check=False,
                )
                elapsed = time.monotonic() - started
        code = result.exit_code
        if code == TIMED_OUT and elapsed >= ctx.lane.timeout_secs:
            outcome = Outcome.failure(f"timed out after {ctx.lane.timeout_secs}s", TIMED_OUT)
        elif code == 0:
            outcome = Outcome(RUN_PASSED, 0, "remote host command passed")
        else:
            outcome = Outcome.failure(f"remote host command exited with {code}", code)
        log(f"{outcome.message} ({elapsed:.2f}s on {builder.host})")
        write_result(ctx, outcome)
        return outcome

    def collect(self, ctx: JobContext, outcome: Outcome) -> Outcome:
        builder = _builder(ctx)
        job = RemoteLayout.for_builder(builder).job_dir(ctx.run_id, ctx.lane.id)
        with _transport(ctx, builder) as transport:
            archive = transport.run(
                "pull artifacts", f"set -eu; cd {_q(job)}/artifacts; tar -cf - ."
            )
            transport.run("remove workspace", f"rm -rf {_q(job)}/workspace")
        _extract(archive.stdout, ctx.artifacts_dir, ctx.host_log.note)
        try:
            result = TerminalResult.from_dict(
                read_json_object(ctx.result_path), str(ctx.result_path)
            )
        except (FileNotFoundError, RecordError) as exc:
            return Outcome.failure(f"collect: missing or invalid result.json: {exc}", None)
        return Outcome.from_result(result)


def _builder(ctx: JobContext) -> Builder:
    if ctx.builder is None:
        raise TransportError(f"lane `{ctx.lane.id}` runs on a builder but none is configured")
    return ctx.builder


def _transport(ctx: JobContext, builder: Builder) -> Transport:
    return Transport(builder, control_dir(), ctx.host_log.note)


def control_dir() -> Path:
    """Where ControlMaster sockets live: short (unix socket paths stop near 108 bytes), private,
    and shared by every run of this user so one connection serves them all."""
    path = Path(tempfile.gettempdir()) / f"pikaci-ssh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise TransportError(f"{path} must be a directory only you can use (mode 700)")
    return path


def _q(text: str) -> str:
    return shlex.quote(text)


def _lane_script(ctx: JobContext, job: str) -> str:
    env: Dict[str, str] = {
        "ARTIFACTS": f"{job}/artifacts",
        "PIKACI_RUN_ID": ctx.run_id,
        "PIKACI_JOB_ID": ctx.lane.id,
        "PIKACI_TARGET_ID": ctx.target.id,
        "PIKACI_WORKSPACE": f"{job}/workspace",
        **dict(ctx.lane.env),
    }
    exports = " ".join(f"{name}={_q(value)}" for name, value in env.items())
    return (
        f"cd {_q(job)}/workspace && export {exports} && "
        f"exec bash --noprofile --norc -lc {_q(ctx.lane.command)}"
    )


def _streamer(ctx: JobContext) -> Callable[[str], None]:
    prefix = f"[{ctx.lane.id}] "

    def emit(line: str) -> None:
        ctx.host_log.write_raw((line + "\n").encode("utf-8", "replace"))
        ctx.console(prefix + line)

    return emit


def _extract(archive: bytes, destination: Path, log: Callable[[str], None]) -> None:
    """Unpack pulled artifacts: regular files and directories inside `destination` only."""
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
