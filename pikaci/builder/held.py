"""A remote command held open for as long as a block runs: leases and instance guards.

The command runs on the builder with its stdin fed from a local pipe. It prints `ready` once it
holds what it is for, then waits on stdin. A block that ends normally writes `release` (if any)
and closes the pipe; one that ends with an exception only closes it, and so does an
orchestrator that dies, and the
transport's watchdog ends the remote side when the SSH session goes. So whatever the command
holds or guards is let go exactly when its holder stops, with no heartbeat."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, List, Optional

from pikaci.builder.layout import Log, RemoteError
from pikaci.builder.transport import Transport

JOIN_SECS = 30.0


@contextlib.contextmanager
def held_command(
    transport: Transport,
    label: str,
    script: str,
    ready: str,
    *,
    release: bytes = b"",
    wait_secs: float = 60.0,
    log: Optional[Log] = None,
) -> Iterator[None]:
    """Runs `script` until the block ends; the block starts once the script printed `ready`.
    `release` is written only when the block ends without an exception. A script that fails or
    stays silent for `wait_secs` is a RemoteError naming `label`."""
    release_read, release_write = os.pipe()
    started = threading.Event()
    failures: List[BaseException] = []

    def on_line(line: str) -> None:
        if line == ready:
            started.set()

    def hold() -> None:
        with os.fdopen(release_read, "rb") as stdin:
            try:
                transport.run(label, script, stdin=stdin, on_line=on_line)
            except BaseException as exc:
                failures.append(exc)
            finally:
                started.set()

    thread = threading.Thread(target=hold, name=label, daemon=True)
    thread.start()
    clean = False
    try:
        if not started.wait(wait_secs):
            raise RemoteError(f"{label}: not ready within {wait_secs:g}s")
        if failures:
            said = str(failures[0])  # the transport's messages name the step already
            message = said if said.startswith(f"{label}: ") else f"{label}: {said}"
            raise RemoteError(message) from failures[0]
        yield
        clean = True
    finally:
        with contextlib.suppress(OSError):
            if clean and release:
                os.write(release_write, release)
        os.close(release_write)  # end of stdin: the remote command lets go
        thread.join(JOIN_SECS)
    if failures and log is not None:
        log(f"{label}: lost while held: {failures[0]}")
