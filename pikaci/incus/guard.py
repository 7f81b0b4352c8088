"""The guard that deletes a lane's instance when the orchestrator dies without doing it.

The runtime deletes its instance itself on every path it lives through (pass, failure,
timeout, SIGINT/SIGTERM). A SIGKILLed orchestrator, or one whose machine goes away, cannot.
For that, a guard is armed before the instance is created: a small shell script on the host
that runs `incus` (this machine, or the builder over SSH) and waits on its stdin. The runtime
ends it with the word `released` once the instance is gone. Anything else (end of input
without the word, which is what a dead orchestrator's pipe gives; a lost SSH session, whose
watchdog sends TERM; HUP or INT) makes it delete the instance.

The runtime sends the word only when the lane ends normally: an interrupted lane deletes its
instance itself and the guard sweeps after it, since an `incus init` that was under way is
finished by the daemon after its client is gone, and the instance would reappear after a delete
that came too early. The sweep runs detached (`setsid`), so the transport's sweep of the guard's
process group cannot cut it short, and deletes until the daemon has said twice, two seconds
apart, that the instance does not exist (at most about 30 s)."""

from __future__ import annotations

import contextlib
import shlex
from typing import Iterator

from pikaci.incus import commands as incus
from pikaci.incus.config import IncusSettings
from pikaci.incus.hosts import IncusHost, quote_argv

GUARD_ARMED = "pikaci-incus-guard-armed"
GUARD_RELEASE = b"released\n"
CHECK_EVERY_SECS = 2
MAX_CHECKS = 15  # about 30 s: a create finishing late, or a daemon coming back


def sweeper_script(settings: IncusSettings, instance: str) -> str:
    """Delete until the daemon says, twice in a row, that the instance does not exist."""
    info = quote_argv(incus.info_argv(settings, instance))
    delete = quote_argv(incus.delete_argv(settings, instance))
    return "\n".join(
        [
            "i=0",
            "absent=0",
            f'while [ "$i" -lt {MAX_CHECKS} ] && [ "$absent" -lt 2 ]',
            "do",
            "  i=$((i + 1))",
            f"  out=$({info} 2>&1)",
            '  case "$?:$out" in',
            f"    0:*) absent=0; {delete} >/dev/null 2>&1 ;;",
            "    *[Nn]ot[[:space:]][Ff]ound*) absent=$((absent + 1)) ;;",
            "    *) absent=0 ;;",  # the daemon did not answer: it may come back
            "  esac",
            f'  [ "$absent" -ge 2 ] || sleep {CHECK_EVERY_SECS}',
            "done",
        ]
    )


def guard_script(settings: IncusSettings, instance: str) -> str:
    detached = shlex.quote(sweeper_script(settings, instance))
    return "\n".join(
        [
            "set -u",
            "cleanup() {",
            "  trap '' HUP INT TERM",
            f"  setsid sh -c {detached} </dev/null >/dev/null 2>&1 &",
            "  exit 0",
            "}",
            "trap cleanup HUP INT TERM",
            f"echo {GUARD_ARMED}",
            "word=$(head -n 1)",
            '[ "$word" = released ] && exit 0',
            "cleanup",
        ]
    )


@contextlib.contextmanager
def guarded_instance(host: IncusHost, settings: IncusSettings, instance: str) -> Iterator[None]:
    """While open, `instance` is deleted should this process die; arm it before `init`."""
    with host.hold(
        f"guard {instance}", guard_script(settings, instance), GUARD_ARMED, GUARD_RELEASE
    ):
        yield
