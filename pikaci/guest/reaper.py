"""Run a command so that nothing it starts outlives it.

    python3 reaper.py COMMAND [ARGS...]

The reaper makes itself a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`), so every process
the command starts that loses its parent becomes the reaper's child instead of init's, also one
that started a session of its own (`setsid -f`, a daemon's double fork) and so escaped the
process group that the orchestrator kills. When the command exits, or the reaper gets SIGTERM,
SIGINT or SIGHUP, every process still below the reaper gets SIGTERM and, after a grace period,
SIGKILL; each one is named on stderr (the job's host log). A process that forks and exits in a
loop is caught too: see `sweep`. The exit status is the command's (128+N when a signal N ended
it or the reaper).

Standard library only, Python 3.9+, Linux: it runs on this machine and is copied to builders
for `remote_ssh` + `host_process` lanes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import time
from typing import Dict, List, Optional

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECS = 2.0
SWEEP_LIMIT_SECS = 10.0
POLL_SECS = 0.05
QUIET_CHECKS = 3
FAST_ROUNDS = 200
NAMED_AT_MOST = 20  # a process forking in a loop is many processes
PREFIX = "[pikaci] "


class Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(code)}")


def descendants(root: int) -> List[int]:
    """Every process below `root`, from /proc (children before their own children)."""
    parents: Dict[int, List[int]] = {}
    for entry in os.scandir("/proc"):
        name = entry.name
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # gone meanwhile
        # the command name is in parentheses and may hold spaces or parentheses itself
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[0] != b"Z":
            parents.setdefault(int(fields[1]), []).append(int(name))
    found: List[int] = []
    frontier = [root]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found.extend(children)
        frontier.extend(children)
    return found


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(word.decode("utf-8", "replace") for word in words if word)
    return text[:200] or "?"


def reap_children() -> int:
    """Collect every child that has exited, adopted orphans included; how many there were."""
    collected = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return collected
        if pid == 0:
            return collected
        collected += 1


def direct_children(me: int) -> List[int]:
    """Our children, read in one step from the kernel (where it lists them), so a process that
    forks and exits in a loop cannot hide between the entries of a /proc scan."""
    try:
        with open(f"/proc/{me}/task/{me}/children", "rb") as handle:
            return [int(word) for word in handle.read().split()]
    except (OSError, ValueError):
        return []


def signal_all(pids: List[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def sweep(me: int) -> None:
    """SIGTERM everything below `me`, SIGKILL what is left after the grace period, until nothing
    is left (orphans of killed processes keep arriving as our children).

    The tree counts as empty only when QUIET_CHECKS scans in a row, POLL_SECS apart, find no
    process below us and no child exited in between: a process that forks and exits in a loop
    is never in one scan, but every member it leaves exits as our child."""
    named: Dict[int, str] = {}
    deadline = time.monotonic() + SWEEP_LIMIT_SECS
    term_sent_at: Optional[float] = None
    quiet = 0
    left: List[int] = []
    while time.monotonic() < deadline:
        exited = reap_children()
        left = sorted(set(direct_children(me)) | set(descendants(me)))
        if not left and not exited:
            quiet += 1
            if quiet >= QUIET_CHECKS:
                break
            time.sleep(POLL_SECS)
            continue
        quiet = 0
        now = time.monotonic()
        fresh = [pid for pid in left if pid not in named]
        for pid in fresh:
            named[pid] = describe(pid)
        escalate = term_sent_at is not None and now - term_sent_at >= GRACE_SECS
        if escalate:
            # SIGKILL what appears as fast as it appears: a killed process cannot fork any more
            for _ in range(FAST_ROUNDS):
                signal_all(left, signal.SIGKILL)
                reap_children()
                left = direct_children(me)
                if not left:
                    break
        else:
            signal_all(fresh, signal.SIGTERM)
            if term_sent_at is None:
                term_sent_at = now
            time.sleep(POLL_SECS)
    stopped = sorted(named.items())
    for pid, command in stopped[:NAMED_AT_MOST]:
        say(f"killed process {pid} the lane left running: {command}")
    if len(stopped) > NAMED_AT_MOST:
        say(f"killed {len(stopped) - NAMED_AT_MOST} more process(es) the lane left running")
    if time.monotonic() >= deadline and left:
        limit = f"{SWEEP_LIMIT_SECS:.0f} s"
        say(f"could not stop {len(left)} process(es) the lane left running within {limit}")


def say(line: str) -> None:
    try:
        sys.stderr.write(PREFIX + line + "\n")
        sys.stderr.flush()
    except OSError:
        pass  # nobody reads the pipe any more


def stop_on(signum: int, frame: object) -> None:
    raise Stop(signum)


def main(argv: List[str]) -> int:
    if not argv:
        say("reaper: usage: reaper.py COMMAND [ARGS...]")
        return 2
    become_subreaper()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop_on)
    me = os.getpid()
    status = 0
    stops = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    try:
        # no signal between fork and the child's reset: the child must never sweep
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        command = os.fork()
        if command == 0:
            for signum in stops:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            try:
                os.execvp(argv[0], argv)
            except OSError as exc:
                say(f"cannot run {argv[0]}: {exc.strerror}")
                os._exit(127 if exc.errno == errno.ENOENT else 126)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        while True:
            pid, raw = os.waitpid(-1, 0)  # adopted orphans are collected here too
            if pid == command:
                status = os.waitstatus_to_exitcode(raw)
                break
    except Stop as stopped:
        status = -stopped.signum
    for signum in stops:
        signal.signal(signum, signal.SIG_IGN)  # finish the sweep whatever else arrives
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    sweep(me)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
