"""SIGINT and SIGTERM during a run.

The first signal stops the lanes' process groups (TERM) and unwinds doit's loop with a
KeyboardInterrupt, after which the reporter closes the run record as interrupted; a signal that
arrives while the run is being closed is recorded, not raised, so the final write is never lost.
A second signal leaves at once. After the run is recorded, the process exits with the
conventional code (130 or 143).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any, Callable, Dict, Optional

from pikaci.process import kill_process_group

SIGNAL_NAMES: Dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Interruption:
    def __init__(self, run_id: str, say: Callable[[str], None], flush: Callable[[], None]) -> None:
        self.run_id = run_id
        self.reason: Optional[str] = None  # the signal's name once one arrived
        self.finishing = False  # the run is being closed
        self.process_groups: Dict[str, int] = {}  # lane id -> process group it runs in
        self._say = say
        self._flush = flush
        self._lock = threading.Lock()
        self._previous: Dict[int, Any] = {}

    def track(self, lane_id: str, pgid: Optional[int]) -> None:
        """A lane's process group started (or is gone: None)."""
        with self._lock:
            if pgid is None:
                self.process_groups.pop(lane_id, None)
            else:
                self.process_groups[lane_id] = pgid

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread
        for signum in SIGNAL_NAMES:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        name = SIGNAL_NAMES.get(signum, f"signal {signum}")
        if self.reason:
            os._exit(128 + signum)  # second signal: stop now
        for pgid in list(self.process_groups.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        if self.finishing:
            return  # the run is being closed: interrupting that would lose the final write
        self.reason = name
        self._say(f"pikaci: {name} received; stopping lanes and marking run {self.run_id}")
        # unwinds doit's loop; the reporter's complete_run then finishes the run record
        raise KeyboardInterrupt(name)

    def exit_if_interrupted(self) -> None:
        """After an interrupt the run is recorded; leave with the conventional code."""
        if not self.reason:
            return
        for pgid in list(self.process_groups.values()):
            kill_process_group(pgid, grace=2.0)
        self._flush()
        os._exit(130 if self.reason == "SIGINT" else 143)
