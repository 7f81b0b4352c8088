"""SIGINT and SIGTERM during a run.

The first signal stops the lanes' process groups (TERM) and unwinds doit's loop with a
KeyboardInterrupt, after which the reporter closes the run record as interrupted; a signal that
arrives while the run is being closed is recorded, not raised, so the final write is never lost.
A second signal leaves at once, after one quick write that marks the run and its running jobs
as interrupted (`abandon`; the runtimes' own guards remove what the lanes left, see
incus/guard.py and builder/transport.py). After the run is recorded, the process exits with
the conventional code (130 or 143).

Lanes that doit runs in threads (`-n`, PIKACI_MAX_CONCURRENT_EXECUTES) are not where the signal
lands: each lane step registers its thread while it runs, the first signal raises
KeyboardInterrupt in every such thread too (`PyThreadState_SetAsyncExc`; the waits of the lane
paths are sliced so that it lands within a fraction of a second), and the run is closed only
once they have left their steps (bounded by STEP_EXIT_SECS): each lane tears its runtime down
and records itself as interrupted, as the lane on the main thread does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Callable, Dict, Iterator, Optional, Set

from pikaci.process import kill_process_group

SIGNAL_NAMES: Dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
STEP_EXIT_SECS = 90.0  # lanes in threads tearing down their runtimes after an interrupt


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
        self.abandon: Callable[[], None] = lambda: None  # the second signal's last write
        self._steps: Set[int] = set()  # threads other than the main one inside a lane step
        self._steps_left = threading.Condition(threading.Lock())

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """A lane step runs: a thread other than the main one gets the interrupt too."""
        ident = threading.get_ident()
        if ident == threading.main_thread().ident:
            yield
            return
        with self._steps_left:
            self._steps.add(ident)
        try:
            yield
        finally:
            with self._steps_left:
                self._steps.discard(ident)
                self._steps_left.notify_all()

    def wait_for_steps(self, timeout: float = STEP_EXIT_SECS) -> bool:
        """After an interrupt: until every thread has left its lane step (False: timed out)."""
        deadline = time.monotonic() + timeout
        with self._steps_left:
            while self._steps:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._steps_left.wait(left)
        return True

    def _interrupt_steps(self) -> None:
        # no lock in a signal handler: the main thread may hold it; a set copies atomically
        for ident in list(self._steps):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt)
            )

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
            # second signal: stop now, the records marked first (never raising from here)
            with contextlib.suppress(BaseException):
                self.abandon()
            os._exit(128 + signum)
        for pgid in list(self.process_groups.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        if self.finishing:
            return  # the run is being closed: interrupting that would lose the final write
        self.reason = name
        self._say(f"pikaci: {name} received; stopping lanes and marking run {self.run_id}")
        self._interrupt_steps()
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
