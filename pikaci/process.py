"""Process groups: stopping one whole (TERM, then KILL after a grace period); waiting for a
child so that an interrupt can land."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Callable, Optional

KILL_GRACE_SECS = 5.0


def kill_process_group(
    pgid: int, grace: float = KILL_GRACE_SECS, reap: Callable[[], object] = lambda: None
) -> None:
    """SIGTERM the group, then SIGKILL whatever is still there after `grace` seconds.

    `reap` collects our own child (the group leader) so its zombie does not keep the group
    looking alive.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap()
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


WAIT_SLICE_SECS = 0.2


def wait_interruptibly(proc: subprocess.Popen[bytes], timeout: Optional[float] = None) -> int:
    """`proc.wait(timeout)` in short slices: a blocking wait never returns to Python, so a lane
    thread would not see the interrupt that `run.signals` raises in it until the child ends."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        slice_secs = WAIT_SLICE_SECS
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout or 0.0)
            slice_secs = min(slice_secs, left)
        try:
            return proc.wait(timeout=slice_secs)
        except subprocess.TimeoutExpired:
            continue
