"""One multiplexed SSH connection per builder: logged, streamed, bounded remote commands.

Connection. A `Transport` starts one ControlMaster per builder (`ssh -M -N -f`, ControlPersist
60 s, socket `<control_dir>/%C`) and runs every command as a mux client over it with
`ControlMaster=auto`, so a master that died or timed out is re-created by the next command.
BatchMode, ConnectTimeout and `-F <ssh_config>` apply to every invocation. `round_trips` counts
the network round trips: each command attempt and each master start (`-O check/exit` are local).

Commands. Every command is logged as `<label>: [<host>] <script>` before it runs. The script runs
under `sh -c` inside a constant POSIX-sh wrapper (`WRAPPER`), its stdout and stderr merged and
streamed back line by line. The wrapper prints `<EXIT_MARKER><code>` on the ssh stderr channel,
which nothing else writes to. That marker tells the two failure classes apart:

- marker present: the command ran; a non-zero code is `RemoteCommandError` and never retried;
- no marker and ssh exit 255 (or ssh killed by a signal): the connection failed; the command is
  retried with exponential backoff, then `TransportError`.

Remote bounds. The command always runs under `timeout -s TERM -k 5 <timeout_secs or 0>` on the
builder (0: no limit; the `-k` still turns an ignored TERM into KILL), and with `timeout_secs` ssh
is also stopped locally if no answer comes well after that. Independently, nothing may
outlive the connection: ssh gives a remote command no signal when the client dies, so the
wrapper watches its stdin instead.

Watchdog and stdin. The local side frames stdin: chunks as `<length>\\n<bytes>`, then `0\\n`,
and keeps the pipe open until it has read the exit marker (or ssh has exited). On the builder the
wrapper (in a process group of its own) connects the command through two FIFOs in a
`mktemp -d` dir:

- a decoder reads the ssh stdin (`read` for a header, `head -c` for the bytes); at the
  terminator it closes its output, so the command sees end of file, then keeps reading;
- a forwarder passes the payload into the command's stdin FIFO and drains it when the command
  stops reading, so the framing never loses sync;
- the command runs in its own session (`setsid`) with stdout and stderr into the output FIFO;
- a relay copies that FIFO to the ssh stdout and drains it once the connection is gone, so the
  command's own cleanup (traps, "Terminated" messages) is never cut short by SIGPIPE.

End of file on the ssh stdin before the wrapper is done means the local ssh or the connection is
gone: the decoder sends SIGHUP to the wrapper, which kills the command's process group (TERM;
`timeout -k` and a sweep follow with KILL after 5 s). On a cut-short payload the decoder holds
its output open meanwhile, so the command is killed without ever seeing end of file: a partial
payload never passes for a complete one. After a normal exit the wrapper sweeps the command's
process group, waits for the relay, prints the marker and kills its own helpers. Nothing
outlives the connection.

A stdin stream is replayed on retry only while nothing of it has been read: a connection lost
mid-stream raises `StreamInterrupted` and the caller restarts the stream (see remote.py).
Builders need POSIX sh, coreutils (`timeout`, `head -c`, `mktemp`, `mkfifo`) and util-linux
(`setsid`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from pikaci.builder.protocol import (
    CONNECTION_KEY_LEN,
    EXIT_MARKER,
    READER_JOIN_SECS,
    WRAPPER,
    Attempt,
    ByteSource,
    ConnectionLost,
    Payload,
    RemoteCommandError,
    RemoteResult,
    Stdin,
    StreamInterrupted,
    TransportError,
    check_control_dir,
    classify,
    feed,
    last_line,
    local_deadline,
    permanent_failure_hint,
    read_diagnostics,
    read_lines,
    result,
    wait,
)

# the protocol's outcomes, re-exported: callers import them with the Transport that raises them
__all__ = [
    "EXIT_MARKER",
    "Builder",
    "ByteSource",
    "RemoteCommandError",
    "RemoteResult",
    "StreamInterrupted",
    "Transport",
    "TransportError",
]

DEFAULT_REMOTE_WORK_DIR = "/var/tmp/pikaci-prepared-output"
CONTROL_PERSIST_SECS = 60


@dataclass(frozen=True)
class Builder:
    host: str  # ssh_config alias or hostname
    ssh_config: Optional[Path] = None  # -F
    remote_work_dir: str = DEFAULT_REMOTE_WORK_DIR
    connect_timeout_secs: int = 5
    ssh_program: str = "ssh"
    # the Nix store the builder's nix commands use: "" = its default store; an absolute path
    # is a chroot store whose files live under `<path>/nix/store`
    nix_store: str = ""


def connection_key(builder: Builder) -> str:
    """What identifies a connection beyond ssh's own %C, as 12 hex digits."""
    config = b""
    if builder.ssh_config is not None:
        try:
            config = Path(builder.ssh_config).read_bytes()
        except OSError:
            config = b"unreadable"  # ssh will say why; the key only has to differ
    digest = hashlib.sha256()
    for part in (builder.host, builder.ssh_program, str(builder.ssh_config or "")):
        digest.update(part.encode() + b"\0")
    digest.update(config)
    return digest.hexdigest()[:CONNECTION_KEY_LEN]


class Transport:
    """Runs commands on one builder over a shared SSH connection; safe to use from threads."""

    def __init__(
        self,
        builder: Builder,
        control_dir: Path,
        log: Callable[[str], None],
        retries: int = 3,
        backoff_secs: float = 0.5,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be zero or positive")
        check_control_dir(control_dir)
        self.builder = builder
        self.connection_key = connection_key(builder)
        self.control_dir = control_dir
        self.log = log
        self.retries = retries
        self.backoff_secs = backoff_secs
        self.round_trips = 0
        self._counter = threading.Lock()
        self._master = threading.Lock()
        self._master_up = False

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public -----------------------------------------------------------------------------

    def run(
        self,
        label: str,
        script: str,
        *,
        stdin: Optional[Stdin] = None,
        timeout_secs: Optional[float] = None,
        on_line: Optional[Callable[[str], None]] = None,
        check: bool = True,
        shown: Optional[str] = None,
    ) -> RemoteResult:
        """Run `script` under `sh -c` on the builder; see the module docstring. The log shows
        `shown` instead of the script when given (the command a wrapper runs)."""
        if timeout_secs is not None and timeout_secs <= 0:
            raise ValueError("timeout_secs must be positive")
        note = f" [remote timeout {timeout_secs:g}s]" if timeout_secs is not None else ""
        self.log(f"{label}: [{self.builder.host}] {shown or script}{note}")
        argv = self._command_argv(script, timeout_secs)
        payload = Payload(stdin)
        reason = ""
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                self._back_off(label, attempt, reason)
            try:
                self._ensure_master()
                outcome = self._attempt(label, argv, payload, timeout_secs, on_line)
            except ConnectionLost as lost:
                reason = lost.reason
                with self._master:
                    self._master_up = False
                hint = permanent_failure_hint(reason)
                if hint is not None:
                    raise TransportError(
                        f"{label}: cannot connect to {self.builder.host}: {reason} ({hint})"
                    ) from None
                if not payload.replayable():
                    raise StreamInterrupted(
                        f"{label}: connection to {self.builder.host} lost mid-stream: {reason}"
                    ) from None
                continue
            return result(label, outcome, timeout_secs, check)
        raise TransportError(
            f"{label}: connection to {self.builder.host} failed "
            f"after {attempts} attempt(s): {reason}"
        )

    def check_master(self) -> bool:
        """`ssh -O check`: is the shared connection up?"""
        return self._control("check")

    def close(self) -> None:
        """Stop the shared connection (`ssh -O exit`); later commands would start a new one."""
        with self._master:
            self._control("exit")
            self._master_up = False

    @property
    def control_path(self) -> str:
        """`<dir>/<connection key>-%C`: ssh's %C covers user, host and port as resolved; the key
        adds what else changes the connection (the ssh program, the config file and its
        contents), so a changed configuration never rides on an old master."""
        return f"{self.control_dir}/{self.connection_key}-%C"

    # -- ssh invocations --------------------------------------------------------------------

    def _base_argv(self) -> List[str]:
        builder = self.builder
        argv = [builder.ssh_program]
        if builder.ssh_config is not None:
            argv += ["-F", str(builder.ssh_config)]
        for option in (
            f"ControlPath={self.control_path}",
            "BatchMode=yes",
            f"ConnectTimeout={builder.connect_timeout_secs}",
            # a dead peer is noticed within ~45 s even when no command is sending
            "ServerAliveInterval=15",
            "ServerAliveCountMax=3",
        ):
            argv += ["-o", option]
        return argv

    def _command_argv(self, script: str, timeout_secs: Optional[float]) -> List[str]:
        limit = "" if timeout_secs is None else f"{timeout_secs:.3f}"
        # the login shell runs this line; setsid gives the wrapper a process group of its own
        words = [WRAPPER, "pikaci", limit, script]
        remote = "exec setsid -w sh -c " + " ".join(shlex.quote(word) for word in words)
        persist = f"ControlPersist={CONTROL_PERSIST_SECS}"
        options = ["-o", "ControlMaster=auto", "-o", persist, "-T", self.builder.host]
        return [*self._base_argv(), *options, remote]

    def _control(self, operation: str) -> bool:
        argv = [*self._base_argv(), "-O", operation, self.builder.host]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.builder.connect_timeout_secs + 5,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def _ensure_master(self) -> None:
        with self._master:
            if self._master_up:
                return
            if self._control("check"):
                self._master_up = True
                return
            # one start per builder across processes: a master that loses the race for the
            # socket would live on unmultiplexed, with no ControlPersist to end it
            with self._start_lock():
                if self._control("check"):
                    self._master_up = True
                    return
                self._start_master()

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        path = self.control_dir / f".start-{self.connection_key}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _start_master(self) -> None:
        self._count()
        argv = [*self._base_argv(), "-o", "ControlMaster=yes"]
        argv += ["-o", f"ControlPersist={CONTROL_PERSIST_SECS}", "-N", "-f", self.builder.host]
        try:
            # -f: returns once authenticated; the master lives on in the background
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=self.builder.connect_timeout_secs + 10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ConnectionLost("no answer while connecting") from None
        if done.returncode != 0:
            message = last_line(done.stderr.decode("utf-8", "replace"))
            raise ConnectionLost(message or f"ssh exited with {done.returncode}")
        self._master_up = True

    def _attempt(
        self,
        label: str,
        argv: List[str],
        payload: Payload,
        timeout_secs: Optional[float],
        on_line: Optional[Callable[[str], None]],
    ) -> Attempt:
        self._count()
        outcome = Attempt()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        finished = threading.Event()
        threads = [
            threading.Thread(target=read_lines, args=(proc, outcome, on_line), daemon=True),
            threading.Thread(target=read_diagnostics, args=(proc, outcome, finished), daemon=True),
        ]
        feeder = threading.Thread(target=feed, args=(proc, payload, outcome, finished), daemon=True)
        for thread in [*threads, feeder]:
            thread.start()
        try:
            outcome.ssh_code = wait(proc, timeout_secs)
        except subprocess.TimeoutExpired:
            raise TransportError(
                f"{label}: no answer from {self.builder.host} within "
                f"{local_deadline(timeout_secs):g}s; ssh stopped"
            ) from None
        finally:
            finished.set()
            for thread in threads:
                thread.join(READER_JOIN_SECS)
            # a feeder stuck in a slow source must not hold us; it ends with the source
            feeder.join(0.5)
        return classify(label, outcome)

    def _back_off(self, label: str, attempt: int, reason: str) -> None:
        delay = self.backoff_secs * (2 ** (attempt - 1))
        self.log(
            f"{label}: connection to {self.builder.host} failed ({reason}); "
            f"retry {attempt}/{self.retries} in {delay:g}s"
        )
        time.sleep(delay)

    def _count(self) -> None:
        with self._counter:
            self.round_trips += 1
