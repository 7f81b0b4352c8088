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

import shlex
import time
from typing import Dict

from pikaci.builder.layout import RemoteLayout
from pikaci.model import RUN_PASSED, RecordError
from pikaci.runtimes.base import JobContext, Outcome, write_result
from pikaci.runtimes.guest_layout import load_result
from pikaci.runtimes.reaping import reaper_source
from pikaci.runtimes.remote_common import (
    extract_archive,
    leased_snapshot,
    open_transport,
    require_builder,
    streamer,
)

TIMED_OUT = 124
NO_PYTHON = (
    "pikaci: this builder has no python3; remote host-process lanes run under pikaci's reaper "
    "(Python 3.9+), which stops whatever a lane leaves running"
)


class RemoteHostProcessRuntime:
    def execute(self, ctx: JobContext) -> Outcome:
        log = ctx.host_log.note
        builder = require_builder(ctx)
        layout = RemoteLayout.for_builder(builder)
        # not closed: the shared master (ControlPersist) serves collect, other lanes and runs
        transport = open_transport(ctx, builder)
        with leased_snapshot(ctx, transport, layout) as snapshot:
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
                on_line=streamer(ctx),
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
        builder = require_builder(ctx)
        job = RemoteLayout.for_builder(builder).job_dir(ctx.run_id, ctx.lane.id)
        transport = open_transport(ctx, builder)
        archive = transport.run("pull artifacts", f"set -eu; cd {_q(job)}/artifacts; tar -cf - .")
        transport.run("remove workspace", f"rm -rf {_q(job)}/workspace")
        extract_archive(archive.stdout, ctx.artifacts_dir, ctx.host_log.note)
        try:
            result = load_result(ctx, ctx.result_path)
        except (OSError, RecordError) as exc:
            return Outcome.failure(f"collect: missing or invalid result.json: {exc}", None)
        return Outcome.from_result(result)


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
    # under the reaper, as local host lanes: what the lane starts in a session of its own
    # (setsid, daemons) is stopped with it instead of outliving it on the builder
    return (
        f"command -v python3 >/dev/null || {{ echo {_q(NO_PYTHON)} >&2; exit 127; }}; "
        f"cd {_q(job)}/workspace && export {exports} && "
        f"exec python3 -I -S -c {_q(reaper_source())} "
        f"bash --noprofile --norc -lc {_q(ctx.lane.command)}"
    )
