"""`local` + `bubblewrap`: the guest layout of the Incus image, on this machine, in bubblewrap.

The layout, the bwrap invocation and the collection are `guest_layout`'s; this runtime probes
this machine's system directories, makes the system profile under `cache/sandbox/`, gives the
runner a job-scoped run directory and resolves payload mounts inside their local store paths.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from pikaci.guest import runner as guest
from pikaci.runtimes.base import JobContext, Outcome
from pikaci.runtimes.guest_layout import (
    BWRAP,
    HOST_BINS,
    HOST_TIMEOUT_GRACE_SECS,
    PROFILE_VERSION,
    RUNNER_NAME,
    SandboxError,
    bwrap_command,
    collect_runtime_dir,
    guest_request,
    payload_mounts,
    probe_system_dirs,
    profile_etc_files,
    result_file_loader,
    runner_outcome,
    runner_source,
    runtime_dir,
)
from pikaci.runtimes.mounts import local_mount_sources
from pikaci.runtimes.process import run_streamed
from pikaci.store import file_lock, write_json


class BubblewrapRuntime:
    def execute(self, ctx: JobContext) -> Outcome:
        if shutil.which(BWRAP) is None:
            raise SandboxError("bubblewrap (`bwrap`) is not installed: apt-get install bubblewrap")
        system = prepare_system_profile(ctx.state.cache_dir / "sandbox")
        run_dir = runtime_dir(ctx)
        shutil.rmtree(run_dir.parent, ignore_errors=True)  # and any earlier host verdict
        run_dir.mkdir(parents=True)
        write_json(run_dir / guest.REQUEST_FILE, guest_request(ctx))
        mounts = payload_mounts(ctx.payloads, local_mount_sources)
        argv = bwrap_command(
            system=str(system),
            run_dir=str(run_dir),
            snapshot_dir=str(ctx.snapshot_dir),
            mounts=mounts,
            system_dirs=probe_system_dirs(),
            run_as_root=ctx.lane.run_as_root,
            network=ctx.lane.network,
            env=sorted(ctx.lane.env.items()),
        )
        ctx.host_log.note(f"sandbox command: {argv!r}")
        for source, target in mounts:
            ctx.host_log.note(f"payload mount: {target} <- {source} (read-only)")
        started = time.monotonic()
        # the runner enforces the lane timeout; the host only steps in if it cannot
        code, timed_out = run_streamed(
            ctx, argv, ctx.lane.timeout_secs + HOST_TIMEOUT_GRACE_SECS, b"[runner:stdout] "
        )
        ctx.host_log.note(f"sandbox exited with {code} after {time.monotonic() - started:.2f}s")
        load = result_file_loader(ctx, run_dir / guest.RESULT_FILE)
        return runner_outcome(ctx, load, code, timed_out)

    def collect(self, ctx: JobContext, outcome: Outcome) -> Outcome:
        return collect_runtime_dir(ctx, outcome)


def prepare_system_profile(root: Path) -> Path:
    """The guest's `/run/current-system/sw`: host tools plus the runner, made once per content.

    Keyed by the profile's own content and the host's tool list, published by rename so
    concurrent lanes never see half of it.
    """
    tools = sorted(
        (entry.name, str(Path(directory) / entry.name))
        for directory in HOST_BINS
        if Path(directory).is_dir()
        for entry in os.scandir(directory)
    )
    layout = f"profile-v{PROFILE_VERSION}:{tools!r}".encode()
    digest = hashlib.sha256(runner_source() + layout).hexdigest()[:16]
    target = root / f"sw-{digest}"
    if (target / "bin" / RUNNER_NAME).is_file():
        return target
    with file_lock(root / ".lock"):
        if (target / "bin" / RUNNER_NAME).is_file():
            return target
        staging = root / f".sw-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        for name, path in tools:
            link = staging / "bin" / name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(path)
        runner = staging / "bin" / RUNNER_NAME
        if runner.is_symlink():
            runner.unlink()
        runner.write_bytes(runner_source())
        runner.chmod(0o555)
        (staging / "etc").mkdir()
        for name, text in profile_etc_files().items():
            (staging / "etc" / name).write_text(text)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target
