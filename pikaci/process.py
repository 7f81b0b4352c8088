"""Process groups: stopping one whole (TERM, then KILL after a grace period)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Callable

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
