"""Where `incus` commands run: this machine (a process group of its own) or the builder over the
shared SSH connection; checked commands, and the reaper of instances runs left behind."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import (
    Any,
    Callable,
    ContextManager,
    Dict,
    Iterator,
    List,
    Optional,
    Protocol,
    Sequence,
)

from pikaci import stdout_apart
from pikaci.builder.held import held_command
from pikaci.builder.transport import Transport
from pikaci.incus import commands as incus
from pikaci.incus import config as incus_config
from pikaci.process import wait_interruptibly

HOLD_EXIT_SECS = 30.0


class IncusRuntimeError(Exception):
    """One line: which step failed where, and the tail of what it printed."""


@dataclass(frozen=True)
class HostResult:
    exit_code: int
    stdout: bytes  # stdout and stderr as one stream, unless it came from `captured`
    stderr: bytes = b""

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def errors(self) -> str:
        return self.stderr.decode("utf-8", "replace")


class IncusHost(Protocol):
    """Where the `incus` client runs."""

    name: str
    log: Callable[[str], None]

    def script(
        self,
        label: str,
        script: str,
        *,
        stdin: Optional[bytes] = None,
        timeout_secs: Optional[float] = None,
        on_line: Optional[Callable[[str], None]] = None,
        shown: Optional[str] = None,
    ) -> HostResult: ...

    def hold(self, label: str, script: str, ready: str, release: bytes) -> ContextManager[None]: ...


class LocalHost:
    """This machine: `sh -c` in a process group of its own, killed on timeout or interrupt."""

    name = "localhost"

    def __init__(
        self,
        log: Callable[[str], None],
        track_process: Callable[[Optional[int]], None] = lambda pgid: None,
    ) -> None:
        self.log = log
        self.track_process = track_process

    def script(
        self,
        label: str,
        script: str,
        *,
        stdin: Optional[bytes] = None,
        timeout_secs: Optional[float] = None,
        on_line: Optional[Callable[[str], None]] = None,
        shown: Optional[str] = None,
    ) -> HostResult:
        self.log(f"{label}: {shown or script}")
        proc = subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.track_process(proc.pid)
        chunks: List[bytes] = []
        reader = threading.Thread(target=_read, args=(proc, chunks, on_line), daemon=True)
        reader.start()
        try:
            if stdin is not None and proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(stdin)
                proc.stdin.close()
            try:
                code = wait_interruptibly(proc, timeout_secs)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                code = 124
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            reader.join(10)
            self.track_process(None)
        return HostResult(code, b"".join(chunks))

    @contextlib.contextmanager
    def hold(self, label: str, script: str, ready: str, release: bytes) -> Iterator[None]:
        """`script` runs until the block ends, `release` written on a clean end only (as
        `pikaci.builder.held`), in a session of its own: neither a terminal's Ctrl-C nor this
        process's death kills it; end of input ends it."""
        self.log(f"{label}: {script}")
        proc = subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        clean = False
        try:
            first = proc.stdout.readline().decode("utf-8", "replace").strip()
            if first != ready:
                raise IncusRuntimeError(f"{label} on {self.name} did not start: {first!r}")
            yield
            clean = True
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(release if clean else b"")
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            try:
                proc.wait(timeout=HOLD_EXIT_SECS)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
            proc.stdout.close()


def _read(
    proc: subprocess.Popen[bytes], chunks: List[bytes], on_line: Optional[Callable[[str], None]]
) -> None:
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        chunks.append(line)
        if on_line is not None:
            on_line(line.decode("utf-8", "replace").rstrip("\r\n"))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class BuilderHost:
    """The builder, over the shared connection; its wrapper bounds every command there too."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.name = transport.builder.host
        self.log = transport.log

    def script(
        self,
        label: str,
        script: str,
        *,
        stdin: Optional[bytes] = None,
        timeout_secs: Optional[float] = None,
        on_line: Optional[Callable[[str], None]] = None,
        shown: Optional[str] = None,
    ) -> HostResult:
        result = self.transport.run(
            label,
            script,
            stdin=stdin,
            timeout_secs=timeout_secs,
            on_line=on_line,
            check=False,
            shown=shown,
        )
        return HostResult(result.exit_code, result.stdout)

    def hold(self, label: str, script: str, ready: str, release: bytes) -> ContextManager[None]:
        return held_command(self.transport, label, script, ready, release=release)


def quote_argv(words: Sequence[str]) -> str:
    return shlex.join(list(words))


def command_failed(host: IncusHost, what: str, result: HostResult) -> IncusRuntimeError:
    said = result.errors if result.stderr.strip() else result.text
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    tail = lines[-1][:300] if lines else ""
    return IncusRuntimeError(
        f"{what} on {host.name} failed (exit {result.exit_code})" + (f": {tail}" if tail else "")
    )


def captured(host: IncusHost, label: str, argv: Sequence[str], **kwargs: Any) -> HostResult:
    """One incus command whose stdout is parsed: stdout apart, stderr (a first run's welcome
    text, warnings) into the log line by line and kept for the error message."""
    command = quote_argv(argv)
    apart = stdout_apart.apart_script(command)
    done = host.script(label, apart.script, shown=f"{command} (stdout apart)", **kwargs)
    stdout, stderr = stdout_apart.split(done.stdout, apart.mark)
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.strip():
            host.log(f"{label}: stderr: {line}")
    return HostResult(done.exit_code, stdout, stderr)


def run_checked(host: IncusHost, label: str, argv: Sequence[str], **kwargs: Any) -> HostResult:
    """One incus command, stdout apart (see `captured`); a non-zero exit is an
    IncusRuntimeError naming it."""
    done = captured(host, label, argv, **kwargs)
    if done.exit_code != 0:
        raise command_failed(host, label, done)
    return done


@dataclass
class ReapReport:
    removed: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)  # marked but younger than the bound
    failed: List[str] = field(default_factory=list)  # marked and old, but not deleted

    def to_dict(self) -> Dict[str, Any]:
        return {"removed": self.removed, "kept": self.kept}


def reap(
    host: IncusHost,
    settings: incus_config.IncusSettings,
    older_than_secs: float,
    log: Callable[[str], None],
    keep_run_ids: Sequence[str] = (),
) -> ReapReport:
    """Delete marked instances older than the bound (never unmarked ones, never those of
    `keep_run_ids`); a delete that fails is reported, not raised."""
    listed = run_checked(host, "incus list", incus.list_instances_argv(settings))
    owned = incus.parse_owned_instances(listed.text)
    now = datetime.now(timezone.utc)
    doomed = incus.reap_candidates(owned, now, older_than_secs, keep_run_ids=keep_run_ids)
    report = ReapReport(kept=[item.name for item in owned if item.name not in doomed])
    for name in doomed:
        done = host.script(f"delete {name}", quote_argv(incus.delete_argv(settings, name)))
        if done.exit_code == 0:
            log(f"removed instance {name} (marked, older than {older_than_secs:g}s)")
            report.removed.append(name)
        else:
            report.failed.append(name)
    return report
