"""One multiplexed SSH connection per builder: logged, streamed, bounded remote commands.

Connection. A `Transport` starts one ControlMaster per builder (`ssh -M -N -f`, ControlPersist
60 s, socket `<control_dir>/%C`) and runs every command as a mux client over it with
`ControlMaster=auto`, so a master that died or timed out is re-created by the next command.
BatchMode, ConnectTimeout and `-F <ssh_config>` apply to every invocation. `round_trips` counts
the network round trips: each command attempt and each master start (`-O check/exit` are local).

Commands. Every command is logged as `<label>: [<host>] <script>` before it runs. The script runs
under `sh -c` inside a constant POSIX-sh wrapper (`_WRAPPER`), its stdout and stderr merged and
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
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Callable, Iterator, List, Optional, Protocol, Union

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
SSH_FAILED = 255
EXIT_MARKER = "__pikaci_remote_exit_status__="
KILL_GRACE_SECS = 5
CHUNK = 1 << 20
TAIL_LINES = 20
# sun_path holds 108 bytes; ssh binds `<path>.<16 random chars>` before renaming it into place
_MAX_SOCKET_PATH = 107 - 17
_HASH_LEN = 40  # %C is a SHA-1 in hex
# headroom over the remote timeout before the local side gives up on a silent connection
_LOCAL_SLACK_SECS = 15.0
_READER_JOIN_SECS = 10.0

_WRAPPER = f"""\
set -u
exec 3<&0 </dev/null
dir=$(mktemp -d "${{TMPDIR:-/tmp}}/pikaci-run.XXXXXX")
trap 'rm -rf "$dir"' EXIT
mkfifo "$dir/in" "$dir/out"
pid=
lost=0
decode() {{
  while IFS= read -r n; do
    case $n in
      0) return 0 ;;
      ''|*[!0-9]*) return 1 ;;
    esac
    head -c "$n" || return 1
  done
  return 1
}}
sweep() {{
  kill -TERM -"$pid" 2>/dev/null || return 0
  n=0
  while [ "$n" -lt {KILL_GRACE_SECS * 10} ] && kill -0 -"$pid" 2>/dev/null; do
    sleep 0.1
    n=$((n + 1))
  done
  kill -KILL -"$pid" 2>/dev/null
}}
finish() {{
  trap '' HUP TERM
  kill -TERM 0 2>/dev/null
  exit "$1"
}}
stop() {{
  lost=1
  [ -n "$pid" ] || return 0
  kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  wait "$pid"
  sweep
  finish 129
}}
trap stop HUP
set -- timeout -s TERM -k {KILL_GRACE_SECS} "${{1:-0}}" sh -c "$2"
{{
  if decode; then
    exec >/dev/null
    cat >/dev/null
    kill -HUP $$
  else
    kill -HUP $$
    exec sleep 86400
  fi
}} <&3 3<&- 2>/dev/null | {{ cat || cat >/dev/null; }} >"$dir/in" 2>/dev/null &
{{ cat || cat >/dev/null; }} <"$dir/out" 3<&- 2>/dev/null &
relay=$!
setsid "$@" <"$dir/in" >"$dir/out" 2>&1 3<&- &
pid=$!
exec 3<&-
trap '' PIPE
[ "$lost" = 0 ] || stop
wait "$pid"
rc=$?
trap '' HUP
sweep
wait "$relay"
printf '%s%d\\n' '{EXIT_MARKER}' "$rc" >&2
finish "$rc"
"""


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


class TransportError(Exception):
    """The builder could not be reached (after retries); the message is one line."""


class StreamInterrupted(TransportError):
    """The connection was lost after part of a stdin stream was sent; restart the stream."""


class RemoteCommandError(Exception):
    """The remote command ran and exited non-zero."""

    def __init__(
        self, label: str, exit_code: int, output_tail: str, timed_out: bool = False
    ) -> None:
        self.label = label
        self.exit_code = exit_code
        self.output_tail = output_tail
        self.timed_out = timed_out
        what = "timed out on the builder" if timed_out else "remote command failed"
        last = _last_line(output_tail)
        super().__init__(f"{label}: {what} (exit code {exit_code})" + (f": {last}" if last else ""))


@dataclass(frozen=True)
class RemoteResult:
    exit_code: int
    stdout: bytes
    stdin_bytes: int = 0

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class ByteSource(Protocol):
    """What `run` accepts as a stdin stream: anything with `read` (a BinaryIO, a pipe)."""

    def read(self, size: int = ..., /) -> bytes: ...


Stdin = Union[bytes, BinaryIO, ByteSource]


class _ConnectionLost(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Payload:
    """stdin as frames; replayable unless a stream was already (partly) read."""

    def __init__(self, data: Optional[Stdin]) -> None:
        self.data = data
        self.touched = False

    def replayable(self) -> bool:
        return self.data is None or isinstance(self.data, bytes) or not self.touched

    def chunks(self) -> Iterator[bytes]:
        if self.data is None:
            return
        if isinstance(self.data, bytes):
            for start in range(0, len(self.data), CHUNK):
                yield self.data[start : start + CHUNK]
            return
        read = getattr(self.data, "read1", self.data.read)
        while True:
            self.touched = True
            # full frames: every frame costs the builder a `head` process
            chunk = bytearray()
            while len(chunk) < CHUNK:
                data = read(CHUNK - len(chunk))
                if not data:
                    break
                chunk += data
            if not chunk:
                return
            yield bytes(chunk)
            if len(chunk) < CHUNK:
                return


@dataclass
class _Attempt:
    ssh_code: Optional[int] = None
    exit_code: Optional[int] = None
    stdout: List[bytes] = field(default_factory=list)
    diagnostics: List[str] = field(default_factory=list)
    sent: int = 0
    feed_error: Optional[BaseException] = None
    callback_error: Optional[BaseException] = None


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
        _check_control_dir(control_dir)
        self.builder = builder
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
    ) -> RemoteResult:
        """Run `script` under `sh -c` on the builder; see the module docstring."""
        if timeout_secs is not None and timeout_secs <= 0:
            raise ValueError("timeout_secs must be positive")
        note = f" [remote timeout {timeout_secs:g}s]" if timeout_secs is not None else ""
        self.log(f"{label}: [{self.builder.host}] {script}{note}")
        argv = self._command_argv(script, timeout_secs)
        payload = _Payload(stdin)
        reason = ""
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                self._back_off(label, attempt, reason)
            try:
                self._ensure_master()
                outcome = self._attempt(label, argv, payload, timeout_secs, on_line)
            except _ConnectionLost as lost:
                reason = lost.reason
                with self._master:
                    self._master_up = False
                if not payload.replayable():
                    raise StreamInterrupted(
                        f"{label}: connection to {self.builder.host} lost mid-stream: {reason}"
                    ) from None
                continue
            return _result(label, outcome, timeout_secs, check)
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
        return f"{self.control_dir}/%C"

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
        words = [_WRAPPER, "pikaci", limit, script]
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
        key = f"{self.builder.host}\0{self.builder.ssh_config}".encode()
        path = self.control_dir / f".start-{hashlib.sha256(key).hexdigest()[:16]}.lock"
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
            raise _ConnectionLost("no answer while connecting") from None
        if done.returncode != 0:
            message = _last_line(done.stderr.decode("utf-8", "replace"))
            raise _ConnectionLost(message or f"ssh exited with {done.returncode}")
        self._master_up = True

    def _attempt(
        self,
        label: str,
        argv: List[str],
        payload: _Payload,
        timeout_secs: Optional[float],
        on_line: Optional[Callable[[str], None]],
    ) -> _Attempt:
        self._count()
        outcome = _Attempt()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        finished = threading.Event()
        threads = [
            threading.Thread(target=_read_lines, args=(proc, outcome, on_line), daemon=True),
            threading.Thread(target=_read_diagnostics, args=(proc, outcome, finished), daemon=True),
        ]
        feeder = threading.Thread(
            target=_feed, args=(proc, payload, outcome, finished), daemon=True
        )
        for thread in [*threads, feeder]:
            thread.start()
        try:
            outcome.ssh_code = _wait(proc, timeout_secs)
        except subprocess.TimeoutExpired:
            raise TransportError(
                f"{label}: no answer from {self.builder.host} within "
                f"{_local_deadline(timeout_secs):g}s; ssh stopped"
            ) from None
        finally:
            finished.set()
            for thread in threads:
                thread.join(_READER_JOIN_SECS)
            # a feeder stuck in a slow source must not hold us; it ends with the source
            feeder.join(0.5)
        return _classify(label, outcome)

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


# -- helpers (module level: they run on the I/O threads) ------------------------------------


def _check_control_dir(control_dir: Path) -> None:
    longest = len(str(control_dir)) + 1 + _HASH_LEN
    if longest > _MAX_SOCKET_PATH:
        raise ValueError(
            f"control_dir {control_dir} is too long for a unix socket path "
            f"({longest} > {_MAX_SOCKET_PATH} bytes); use a short directory such as /tmp/pikaci-ssh"
        )
    control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def _local_deadline(timeout_secs: Optional[float]) -> Optional[float]:
    if timeout_secs is None:
        return None
    return timeout_secs + KILL_GRACE_SECS + _LOCAL_SLACK_SECS


def _wait(proc: subprocess.Popen[bytes], timeout_secs: Optional[float]) -> int:
    """ssh's exit code; stops ssh (and so the remote side) past the local deadline."""
    try:
        return proc.wait(timeout=_local_deadline(timeout_secs))
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=KILL_GRACE_SECS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    except BaseException:
        # interrupted (KeyboardInterrupt): the watchdog cleans up once ssh is gone
        proc.kill()
        proc.wait()
        raise


def _feed(
    proc: subprocess.Popen[bytes],
    payload: _Payload,
    outcome: _Attempt,
    finished: threading.Event,
) -> None:
    """Send the framed payload, then hold stdin open until the exit marker (the watchdog's line).

    A failing source closes stdin without the terminator: the builder then kills the command.
    """
    pipe = proc.stdin
    assert pipe is not None
    chunks = payload.chunks()
    try:
        while not finished.is_set():
            try:
                chunk = next(chunks, None)
            except BaseException as exc:
                outcome.feed_error = exc
                return
            if chunk is None:
                _write_all(pipe, b"0\n")
                finished.wait()
                return
            _write_all(pipe, b"%d\n" % len(chunk))
            _write_all(pipe, chunk)
            outcome.sent += len(chunk)
    except (OSError, ValueError):
        return  # ssh is gone: the outcome comes from its exit status
    finally:
        with contextlib.suppress(OSError):
            pipe.close()


def _write_all(pipe: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = pipe.write(view)
        view = view[written or 0 :]


def _read_lines(
    proc: subprocess.Popen[bytes], outcome: _Attempt, on_line: Optional[Callable[[str], None]]
) -> None:
    stream = proc.stdout
    assert stream is not None
    for line in iter(stream.readline, b""):
        outcome.stdout.append(line)
        if on_line is None or outcome.callback_error is not None:
            continue
        try:
            on_line(line.decode("utf-8", "replace").rstrip("\r\n"))
        except BaseException as exc:
            # keep draining: a stalled pipe would stall the remote command
            outcome.callback_error = exc
    stream.close()


def _read_diagnostics(
    proc: subprocess.Popen[bytes], outcome: _Attempt, finished: threading.Event
) -> None:
    stream = proc.stderr
    assert stream is not None
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        code = line[len(EXIT_MARKER) :] if line.startswith(EXIT_MARKER) else ""
        if code.isdigit():
            outcome.exit_code = int(code)
            finished.set()  # the feeder closes stdin: the builder's decoder may end now
        elif line.strip():
            outcome.diagnostics.append(line.strip())
    stream.close()


def _classify(label: str, outcome: _Attempt) -> _Attempt:
    for error in (outcome.feed_error, outcome.callback_error):
        if error is not None:
            raise error
    if outcome.exit_code is not None:
        return outcome
    code = outcome.ssh_code
    if outcome.diagnostics:
        reason = outcome.diagnostics[-1][:200]
    elif code is not None and code < 0:
        reason = f"ssh was killed by {_signal_name(-code)}"
    else:
        reason = f"ssh exited with {code}"
    if code is not None and (code == SSH_FAILED or code < 0):
        raise _ConnectionLost(reason)
    raise TransportError(f"{label}: the remote wrapper ended without an exit status: {reason}")


def _result(
    label: str, outcome: _Attempt, timeout_secs: Optional[float], check: bool
) -> RemoteResult:
    assert outcome.exit_code is not None
    stdout = b"".join(outcome.stdout)
    if outcome.exit_code != 0 and check:
        tail = b"".join(outcome.stdout[-TAIL_LINES:]).decode("utf-8", "replace")
        timed_out = timeout_secs is not None and outcome.exit_code in (124, 137)
        raise RemoteCommandError(label, outcome.exit_code, tail, timed_out)
    return RemoteResult(exit_code=outcome.exit_code, stdout=stdout, stdin_bytes=outcome.sent)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
