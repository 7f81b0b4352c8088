"""`local` + `host_process`: the lane command runs on this machine in a materialized workspace.

The workspace is a writable copy of the target's snapshot kept per lane under
`cache/host-local/lane-<id>/workspace` and re-materialized only when the snapshot's content
hash changes. A per-lane lock serialises two runs of the same lane. The command runs in its own
process group, so the job timeout (and an interrupt) kills everything it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Dict, Iterator

from pikaci.confined import read_json_below
from pikaci.model import RUN_PASSED, RecordError
from pikaci.runtimes.base import JobContext, Outcome, write_result
from pikaci.runtimes.guest_layout import load_result
from pikaci.runtimes.process import run_streamed
from pikaci.runtimes.reaping import reaped
from pikaci.store import file_lock, write_json

SHELL = ("/bin/bash", "--noprofile", "--norc", "-lc")
KILL_GRACE_SECS = 5.0
LOCK_POLL_SECS = 0.25
_MARKER = "workspace.json"


class HostProcessRuntime:
    def execute(self, ctx: JobContext) -> Outcome:
        lane = ctx.lane
        scope = ctx.state.host_local_dir(lane.id)
        with _lane_lock(ctx, scope / ".lock"):
            workspace = _materialize(ctx, scope)
            env = _environment(ctx, scope, workspace)
            ctx.host_log.note(f"host-local command: {[*SHELL, lane.command]!r}")
            ctx.host_log.note(f"workspace: {workspace}")
            started = time.monotonic()
            exit_code, timed_out = run_streamed(
                ctx, reaped([*SHELL, lane.command]), lane.timeout_secs, cwd=workspace, env=env
            )
            elapsed = time.monotonic() - started
        if timed_out:
            outcome = Outcome.failure(f"timed out after {lane.timeout_secs}s", exit_code=124)
        elif exit_code == 0:
            outcome = Outcome(RUN_PASSED, 0, "host-local command passed")
        elif exit_code is not None and exit_code < 0:
            name = signal.Signals(-exit_code).name
            outcome = Outcome.failure(f"host-local command killed by {name}", 128 - exit_code)
        else:
            outcome = Outcome.failure(f"host-local command exited with {exit_code}", exit_code)
        ctx.host_log.note(f"{outcome.message} ({elapsed:.2f}s)")
        write_result(ctx, outcome)
        return outcome

    def collect(self, ctx: JobContext, outcome: Outcome) -> Outcome:
        # the command wrote straight into the job directory; the result file is authoritative,
        # read as the lane may have left it (a link, a FIFO): confined to the job directory
        try:
            result = load_result(ctx, ctx.result_path)
        except (OSError, RecordError) as exc:
            message = f"collect: missing or invalid {ctx.result_path.name}: {exc}"
            ctx.host_log.note(message)
            return Outcome.failure(message, outcome.exit_code)
        return Outcome.from_result(result)


@contextlib.contextmanager
def _lane_lock(ctx: JobContext, path: Path) -> Iterator[None]:
    deadline = time.monotonic() + ctx.lane.timeout_secs
    announced = False
    while True:
        with file_lock(path, blocking=False) as acquired:
            if acquired:
                yield
                return
        if not announced:
            ctx.host_log.note(f"waiting for {path} (another run of this lane holds it)")
            announced = True
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {path} after {ctx.lane.timeout_secs}s")
        time.sleep(LOCK_POLL_SECS)


def _materialize(ctx: JobContext, scope: Path) -> Path:
    workspace = scope / "workspace"
    marker = scope / _MARKER
    try:
        current = read_json_below(scope, marker).get("snapshot_id")
    except (OSError, RecordError):  # missing, or something a lane put there
        current = None
    if current == ctx.snapshot_id and workspace.is_dir():
        ctx.host_log.note(f"workspace up to date with snapshot {ctx.content_hash[:12]}")
        return workspace
    started = time.monotonic()
    staging = scope / f".workspace-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(ctx.snapshot_dir, staging, symlinks=True)
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    shutil.rmtree(workspace, ignore_errors=True)
    staging.rename(workspace)
    write_json(marker, {"snapshot_id": ctx.snapshot_id, "snapshot_dir": str(ctx.snapshot_dir)})
    ctx.host_log.note(
        f"materialized workspace from snapshot {ctx.content_hash[:12]} "
        f"in {time.monotonic() - started:.2f}s"
    )
    return workspace


def _environment(ctx: JobContext, scope: Path, workspace: Path) -> Dict[str, str]:
    env = dict(os.environ)
    cargo_home = ctx.state.cache_dir / "cargo-home"
    cargo_target = scope / "cargo-target"
    cargo_home.mkdir(parents=True, exist_ok=True)
    cargo_target.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "ARTIFACTS": str(ctx.artifacts_dir),
            "CARGO_HOME": str(cargo_home),
            "CARGO_TARGET_DIR": str(cargo_target),
            "PIKACI_RUN_ID": ctx.run_id,
            "PIKACI_JOB_ID": ctx.lane.id,
            "PIKACI_TARGET_ID": ctx.target.id,
            "PIKACI_SNAPSHOT_DIR": str(ctx.snapshot_dir),
            "PIKACI_WORKSPACE": str(workspace),
            "PIKACI_SOURCE_ROOT": str(ctx.source_root),
        }
    )
    env.update(ctx.lane.env)
    return env
