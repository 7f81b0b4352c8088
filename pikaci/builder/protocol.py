"""The builder side of a transport command and the local I/O that talks to it: the POSIX-sh
wrapper (watchdog, stdin framing, exit marker), stdin frames, and the reader and feeder threads.
See `transport.py` for the protocol as a whole."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Callable, Iterator, List, Optional, Protocol, Union

from pikaci.process import wait_interruptibly


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
        last = last_line(output_tail)
        super().__init__(f"{label}: {what} (exit code {exit_code})" + (f": {last}" if last else ""))


@dataclass(frozen=True)
class RemoteResult:
    exit_code: int
    stdout: bytes
    stdin_bytes: int = 0

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


SSH_FAILED = 255
EXIT_MARKER = "__pikaci_remote_exit_status__="
KILL_GRACE_SECS = 5
CHUNK = 1 << 20
TAIL_LINES = 20
# sun_path holds 108 bytes; ssh binds `<path>.<16 random chars>` before renaming it into place
_MAX_SOCKET_PATH = 107 - 17
_HASH_LEN = 40  # %C is a SHA-1 in hex
CONNECTION_KEY_LEN = 12  # before %C in the socket name (see Transport.control_path)
# headroom over the remote timeout before the local side gives up on a silent connection
_LOCAL_SLACK_SECS = 15.0
READER_JOIN_SECS = 10.0

WRAPPER = f"""\
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


class ByteSource(Protocol):
    """What `run` accepts as a stdin stream: anything with `read` (a BinaryIO, a pipe)."""

    def read(self, size: int = ..., /) -> bytes: ...


Stdin = Union[bytes, BinaryIO, ByteSource]


# ssh failures that waiting does not cure, with what a person does about them
PERMANENT_SSH_FAILURES = (
    (
        "host key verification failed",
        "the builder's host key is unknown or changed: check its fingerprint, then add it to "
        "known_hosts (ssh-keyscan) or the UserKnownHostsFile of PIKACI_BUILDER_SSH_CONFIG",
    ),
    (
        "permission denied",
        "the login was refused: check the user and the key (BatchMode: key only, no password)",
    ),
    (
        "could not resolve hostname",
        "check PIKACI_BUILDER and the Host/HostName entries of the SSH config",
    ),
    ("bad configuration option", "fix PIKACI_BUILDER_SSH_CONFIG"),
    ("can't open user config file", "PIKACI_BUILDER_SSH_CONFIG names a file that is not there"),
    ("terminating, 1 bad configuration options", "fix PIKACI_BUILDER_SSH_CONFIG"),
)


def permanent_failure_hint(reason: str) -> Optional[str]:
    """The fix for an ssh failure that a retry would only repeat; None for the others."""
    lowered = reason.lower()
    return next((hint for sign, hint in PERMANENT_SSH_FAILURES if sign in lowered), None)


class ConnectionLost(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Payload:
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
class Attempt:
    ssh_code: Optional[int] = None
    exit_code: Optional[int] = None
    stdout: List[bytes] = field(default_factory=list)
    diagnostics: List[str] = field(default_factory=list)
    sent: int = 0
    feed_error: Optional[BaseException] = None
    callback_error: Optional[BaseException] = None


# -- helpers (module level: they run on the I/O threads) ------------------------------------


def check_control_dir(control_dir: Path) -> None:
    longest = len(str(control_dir)) + 1 + CONNECTION_KEY_LEN + 1 + _HASH_LEN
    if longest > _MAX_SOCKET_PATH:
        raise ValueError(
            f"control_dir {control_dir} is too long for a unix socket path "
            f"({longest} > {_MAX_SOCKET_PATH} bytes); use a short directory such as /tmp/pikaci-ssh"
        )
    control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def local_deadline(timeout_secs: Optional[float]) -> Optional[float]:
    if timeout_secs is None:
        return None
    return timeout_secs + KILL_GRACE_SECS + _LOCAL_SLACK_SECS


def wait(proc: subprocess.Popen[bytes], timeout_secs: Optional[float]) -> int:
    """ssh's exit code; stops ssh (and so the remote side) past the local deadline."""
    try:
        return wait_interruptibly(proc, local_deadline(timeout_secs))
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


def feed(
    proc: subprocess.Popen[bytes],
    payload: Payload,
    outcome: Attempt,
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


def read_lines(
    proc: subprocess.Popen[bytes], outcome: Attempt, on_line: Optional[Callable[[str], None]]
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


def read_diagnostics(
    proc: subprocess.Popen[bytes], outcome: Attempt, finished: threading.Event
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


def classify(label: str, outcome: Attempt) -> Attempt:
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
        raise ConnectionLost(reason)
    raise TransportError(f"{label}: the remote wrapper ended without an exit status: {reason}")


def result(
    label: str, outcome: Attempt, timeout_secs: Optional[float], check: bool
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


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
