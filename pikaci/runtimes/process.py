"""A lane's local process: its own process group, output streamed, killed whole on timeout."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from pathlib import Path
from typing import IO, Dict, Optional, Sequence, Tuple

from pikaci.process import KILL_GRACE_SECS, kill_process_group
from pikaci.runtimes.base import JobContext


def run_streamed(
    ctx: JobContext,
    argv: Sequence[str],
    timeout_secs: float,
    log_prefix: bytes = b"",
    cwd: Optional[Path] = None,
    env: Optional[Dict[str, str]] = None,
) -> Tuple[Optional[int], bool]:
    """Run `argv` in a new session; return (exit code, timed out).

    Every output line goes raw (after `log_prefix`) to the job's host log and `[<lane>] `-
    prefixed to the console. On timeout, and after a normal exit too, the whole process group
    is killed: background children left behind would hold the pipe open.
    """
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ctx.track_process(proc.pid)
    assert proc.stdout is not None
    pump = threading.Thread(target=_pump, args=(ctx, proc.stdout, log_prefix), daemon=True)
    pump.start()
    timed_out = False
    try:
        try:
            proc.wait(timeout=timeout_secs)
        except subprocess.TimeoutExpired:
            timed_out = True
            ctx.host_log.note(f"timeout after {timeout_secs:g}s, killing the process group")
    finally:
        kill_process_group(proc.pid, reap=proc.poll)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE_SECS)
        ctx.track_process(None)
        pump.join(timeout=KILL_GRACE_SECS)
    return proc.returncode, timed_out


def _pump(ctx: JobContext, stream: IO[bytes], log_prefix: bytes) -> None:
    prefix = f"[{ctx.lane.id}] "
    with open(ctx.host_log_path, "ab", buffering=0) as log:
        for line in iter(stream.readline, b""):
            log.write(log_prefix + line)
            ctx.console(prefix + line.decode("utf-8", "replace").rstrip("\r\n"))
    stream.close()
