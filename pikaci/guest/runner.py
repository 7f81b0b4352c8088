#!/run/current-system/sw/bin/python3
"""pikaci guest runner, installed in guest images as `/run/current-system/sw/bin/pikaci-incus-run`.

    pikaci-incus-run <request-path>

Reads a guest request (JSON, schema 2), runs its command as the unprivileged `pikaci` user under
`timeout`, streams the output to stdout and `<run dir>/logs/guest.log`, and records the lifecycle
in `<run dir>/{status.json,events.jsonl,result.json}`. `docs/guest-contract.md` is the contract.

This file is copied into images on its own: standard library only, Python >= 3.9, and it must
never import anything from the rest of the `pikaci` package.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import pwd
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import IO, Any, BinaryIO, Dict, List, Mapping, Optional, Sequence, Set, Tuple

# -- contract constants --------------------------------------------------------------------

KILL_AFTER_SECS = 5  # grace between the deadline's SIGTERM and SIGKILL
REQUEST_SCHEMA_VERSION = 2
LIFECYCLE_SCHEMA_VERSION = 1
DEFAULT_RUN_DIR = "/run/pika-cloud"
RUN_DIR_ENV = "PIKACI_GUEST_RUN_DIR"
# which guest this is, for the boot line: upstream's wording (`incus`) unless a sandbox says so
KIND_ENV = "PIKACI_GUEST_KIND"
DEFAULT_KIND = "incus"
REQUEST_FILE = "guest-request.json"
RUNNER_PATH = "/run/current-system/sw/bin/pikaci-incus-run"

GUEST_USER = "pikaci"
GUEST_UID = 1000
GUEST_GID = 100
ROOT_HOME = "/root"

SYSTEM_SW = "/run/current-system/sw"
SYSTEM_BIN = SYSTEM_SW + "/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-bundle.crt"
CA_CERTIFICATES = "/etc/ssl/certs/ca-certificates.crt"

LOGS_DIR = "logs"
ARTIFACTS_DIR = "artifacts"
GUEST_LOG = "guest.log"  # under LOGS_DIR
STATUS_FILE = "status.json"
EVENTS_FILE = "events.jsonl"
EVENTS_SEQ_FILE = EVENTS_FILE + ".seq"
RESULT_FILE = "result.json"

LIFECYCLE_STATES = (
    "requested",
    "provisioning",
    "booted",
    "unreachable",
    "stopped",
    "destroyed",
    "starting",
    "ready",
    "failed",
    "completed",
)
RESULT_COMPLETED = "completed"
RESULT_FAILED = "failed"

EXIT_USAGE = 2
EXIT_BOOTSTRAP = 2
EXIT_TIMEOUT = 124  # what GNU timeout returns when the limit expires

# how long the runner keeps reading after the command exited before it stops the processes
# that still hold the output pipe; then SIGTERM, SIGKILL after the grace, then give up on it
OUTPUT_DRAIN_SECS = 1.0
KILL_GRACE_SECS = 5.0
ABANDON_SECS = 2.0
POLL_SECS = 0.1
CHUNK_BYTES = 65536

DIR_FIELDS = (
    "workspace_dir",
    "cargo_home_dir",
    "cargo_target_dir",
    "xdg_state_home_dir",
    "home_dir",
)
_REQUIRED_FIELDS = ("schema_version", "command", "timeout_secs", "run_as_root")
_ALL_FIELDS = _REQUIRED_FIELDS + DIR_FIELDS

USAGE = "usage: pikaci-incus-run <request-path>"


def default_dirs(run_dir: str = DEFAULT_RUN_DIR) -> Dict[str, str]:
    """The image's layout: what each optional directory field means when it is absent."""
    return {
        "workspace_dir": "/workspace/snapshot",
        "cargo_home_dir": "/cargo-home",
        "cargo_target_dir": "/cargo-target",
        "xdg_state_home_dir": posixpath.join(run_dir, "xdg-state"),
        "home_dir": "/home/pikaci",
    }


DEFAULT_DIRS: Mapping[str, str] = MappingProxyType(default_dirs())


def guest_run_dir(environ: Optional[Mapping[str, str]] = None) -> str:
    """`$PIKACI_GUEST_RUN_DIR` when set (tests, sandboxes), else `/run/pika-cloud`."""
    value = (os.environ if environ is None else environ).get(RUN_DIR_ENV, "")
    return str(Path(value).absolute()) if value else DEFAULT_RUN_DIR


# -- the request ---------------------------------------------------------------------------


class RequestError(ValueError):
    """The guest request is malformed; the message names the offending field."""


class BootstrapError(RuntimeError):
    """The guest cannot run the request (layout, privileges)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_dir(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string or null, got {value!r}")
    if (
        not value.startswith("/")
        or value.startswith("//")
        or "\0" in value
        or posixpath.normpath(value) != value
    ):
        raise RequestError(f"{name} must be an absolute normalised path, got {value!r}")
    if value == "/":
        raise RequestError(f"{name} must not be the root directory")


def _check_request(request: GuestRequest) -> None:
    version = request.schema_version
    if not _is_int(version):
        raise RequestError(f"schema_version must be an integer, got {version!r}")
    if version != REQUEST_SCHEMA_VERSION:
        raise RequestError(
            f"unsupported schema_version {version} (this runner accepts {REQUEST_SCHEMA_VERSION})"
        )
    command = request.command
    if not isinstance(command, str) or not command.strip():
        raise RequestError(f"command must be a non-empty string, got {command!r}")
    if "\0" in command:
        raise RequestError("command must not contain NUL characters")
    timeout = request.timeout_secs
    if not _is_int(timeout) or timeout <= 0:
        raise RequestError(f"timeout_secs must be a positive integer, got {timeout!r}")
    if not isinstance(request.run_as_root, bool):
        raise RequestError(f"run_as_root must be a boolean, got {request.run_as_root!r}")
    for name in DIR_FIELDS:
        _check_dir(name, getattr(request, name))


@dataclass(frozen=True)
class GuestRequest:
    """Guest request schema 2. A directory left as None means the image's default."""

    schema_version: int
    command: str
    timeout_secs: int
    run_as_root: bool
    workspace_dir: Optional[str] = None
    cargo_home_dir: Optional[str] = None
    cargo_target_dir: Optional[str] = None
    xdg_state_home_dir: Optional[str] = None
    home_dir: Optional[str] = None

    def __post_init__(self) -> None:
        _check_request(self)


def parse_request(data: object) -> GuestRequest:
    """Strictly validate decoded JSON: wrong types, missing or unknown fields raise RequestError."""
    if not isinstance(data, dict):
        raise RequestError(f"guest request must be a JSON object, got {type(data).__name__}")
    # the version first: an old request should say so rather than trip over its other fields
    if "schema_version" not in data:
        raise RequestError("missing field 'schema_version'")
    version = data["schema_version"]
    if not _is_int(version):
        raise RequestError(f"schema_version must be an integer, got {version!r}")
    if version != REQUEST_SCHEMA_VERSION:
        raise RequestError(
            f"unsupported schema_version {version} (this runner accepts {REQUEST_SCHEMA_VERSION})"
        )
    unknown = sorted(str(key) for key in data if key not in _ALL_FIELDS)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise RequestError(f"unknown field{plural} {names} in guest request")
    for name in _REQUIRED_FIELDS:
        if name not in data:
            raise RequestError(f"missing field {name!r}")
    return GuestRequest(
        schema_version=data["schema_version"],
        command=data["command"],
        timeout_secs=data["timeout_secs"],
        run_as_root=data["run_as_root"],
        workspace_dir=data.get("workspace_dir"),
        cargo_home_dir=data.get("cargo_home_dir"),
        cargo_target_dir=data.get("cargo_target_dir"),
        xdg_state_home_dir=data.get("xdg_state_home_dir"),
        home_dir=data.get("home_dir"),
    )


def request_to_dict(request: GuestRequest) -> Dict[str, Any]:
    """The JSON object of a request; directories left to the image default are omitted."""
    data: Dict[str, Any] = {
        "schema_version": request.schema_version,
        "command": request.command,
        "timeout_secs": request.timeout_secs,
        "run_as_root": request.run_as_root,
    }
    for name in DIR_FIELDS:
        value = getattr(request, name)
        if value is not None:
            data[name] = value
    return data


def _reject_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise RequestError(f"duplicate field {key!r} in guest request")
        result[key] = value
    return result


def load_request(path: str) -> GuestRequest:
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        data = json.loads(raw, object_pairs_hook=_reject_duplicates)
    except RequestError:
        raise
    except ValueError as exc:
        raise RequestError(f"guest request {path} is not valid JSON: {exc}") from None
    return parse_request(data)


def effective_dirs(request: Optional[GuestRequest] = None, run_dir: str = "") -> Dict[str, str]:
    """The directories a request runs with: its own where given, else the image defaults."""
    dirs = default_dirs(run_dir or guest_run_dir())
    if request is not None:
        for name in DIR_FIELDS:
            value = getattr(request, name)
            if value is not None:
                dirs[name] = value
    return dirs


# -- command and environment ---------------------------------------------------------------


def command_runs_as_root(request: GuestRequest, euid: int) -> bool:
    if request.run_as_root and euid != 0:
        raise BootstrapError(
            f"the request asks for run_as_root but the runner runs as uid {euid}, not root"
        )
    return request.run_as_root


def build_argv(request: GuestRequest, euid: int) -> List[str]:
    """`timeout -k 5s <N>s bash --noprofile --norc -lc <command>`, behind runuser when root
    drops; `-k` SIGKILLs a command that ignores the SIGTERM sent at the deadline."""
    argv = [
        "timeout",
        "-k",
        f"{KILL_AFTER_SECS}s",
        f"{request.timeout_secs}s",
        "bash",
        "--noprofile",
        "--norc",
        "-lc",
        request.command,
    ]
    as_root = command_runs_as_root(request, euid)  # refuses run_as_root without root
    if euid == 0 and not as_root:
        return ["runuser", "-u", GUEST_USER, "-m", "--", *argv]
    return argv


def ssl_cert_file() -> str:
    if not Path(CA_BUNDLE).exists() and Path(CA_CERTIFICATES).exists():
        return CA_CERTIFICATES
    return CA_BUNDLE


def build_env(
    request: GuestRequest,
    run_dir: str,
    euid: int,
    base_env: Optional[Mapping[str, str]] = None,
) -> Dict[str, str]:
    """The inherited environment plus the guest layout (see docs/guest-contract.md)."""
    dirs = effective_dirs(request, run_dir)
    env = dict(os.environ if base_env is None else base_env)
    certs = ssl_cert_file()
    as_root = command_runs_as_root(request, euid)
    env.update(
        {
            "PATH": f"{SYSTEM_BIN}:{env.get('PATH') or os.defpath}",
            "CARGO_TERM_COLOR": "never",
            "CARGO_HOME": dirs["cargo_home_dir"],
            "CARGO_TARGET_DIR": dirs["cargo_target_dir"],
            "CARGO_INCREMENTAL": "0",
            "XDG_CACHE_HOME": posixpath.join(dirs["cargo_home_dir"], "xdg-cache"),
            "XDG_STATE_HOME": dirs["xdg_state_home_dir"],
            "PGSYSCONFDIR": SYSTEM_SW,
            "PGSHAREDIR": SYSTEM_SW + "/share/postgresql",
            "SSL_CERT_FILE": certs,
            "NIX_SSL_CERT_FILE": certs,
            "HOME": ROOT_HOME if as_root else dirs["home_dir"],
            "ARTIFACTS": posixpath.join(run_dir, ARTIFACTS_DIR),
            "PIKACI_GUEST": "1",
        }
    )
    return env


# -- lifecycle files -----------------------------------------------------------------------


def local_timestamp() -> str:
    """Local time, ISO-8601 with seconds and the UTC offset: 2026-11-21T12:00:00+01:00."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def read_boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            value = handle.read().strip()
    except (OSError, ValueError):
        return None
    return value or None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Temp file in the same directory, fsync, rename, fsync of the directory."""
    data = (json.dumps(payload, indent=2) + "\n").encode("utf-8")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


class Lifecycle:
    """status.json, events.jsonl (+ its seq counter) and result.json of one run directory."""

    def __init__(self, run_dir: str, boot_id: Optional[str] = None) -> None:
        self.run_dir = Path(run_dir)
        self.boot_id = boot_id
        self.status_path = self.run_dir / STATUS_FILE
        self.events_path = self.run_dir / EVENTS_FILE
        self.seq_path = self.run_dir / EVENTS_SEQ_FILE
        self.result_path = self.run_dir / RESULT_FILE

    def status(self, state: str, message: str, details: Optional[Mapping[str, Any]] = None) -> None:
        if state not in LIFECYCLE_STATES:
            raise ValueError(f"unknown lifecycle state {state!r}")
        payload: Dict[str, Any] = {
            "schema_version": LIFECYCLE_SCHEMA_VERSION,
            "state": state,
            "updated_at": local_timestamp(),
            "message": message,
        }
        if self.boot_id is not None:
            payload["boot_id"] = self.boot_id
        if details is not None:
            payload["details"] = dict(details)
        write_json_atomic(self.status_path, payload)

    def event(self, kind: str, message: str, details: Optional[Mapping[str, Any]] = None) -> int:
        """Append one event; its seq comes from the counter file, taken under an flock."""
        fd = os.open(self.seq_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 64).decode("ascii", "replace").strip()
            try:
                seq = int(raw) + 1
            except ValueError:
                seq = self._last_logged_seq() + 1
            payload: Dict[str, Any] = {
                "schema_version": LIFECYCLE_SCHEMA_VERSION,
                "kind": kind,
                "timestamp": local_timestamp(),
                "message": message,
            }
            if self.boot_id is not None:
                payload["boot_id"] = self.boot_id
            if details is not None:
                payload["details"] = dict(details)
            payload["seq"] = seq
            line = (json.dumps(payload, separators=(",", ":")) + "\n").encode("utf-8")
            events = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _write_all(events, line)
                os.fsync(events)
            finally:
                os.close(events)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            _write_all(fd, f"{seq}\n".encode("ascii"))
            os.fsync(fd)
            return seq
        finally:
            os.close(fd)  # closing releases the flock

    def _last_logged_seq(self) -> int:
        """A missing or corrupt counter resumes after the highest seq already in events.jsonl."""
        last = 0
        try:
            with open(self.events_path, "rb") as handle:
                for line in handle:
                    try:
                        seq = json.loads(line).get("seq")
                    except (ValueError, AttributeError):
                        continue
                    if _is_int(seq):
                        last = max(last, seq)
        except OSError:
            pass
        return last

    def record(self, state: str, message: str, details: Optional[Mapping[str, Any]] = None) -> None:
        """status.json and the event of the same name."""
        self.status(state, message, details)
        self.event(state, message, details)

    def result(
        self,
        status: str,
        exit_code: int,
        message: str,
        details: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if status not in (RESULT_COMPLETED, RESULT_FAILED):
            raise ValueError(f"result status must be completed or failed, got {status!r}")
        payload: Dict[str, Any] = {
            "schema_version": LIFECYCLE_SCHEMA_VERSION,
            "status": status,
            "exit_code": exit_code,
            "finished_at": local_timestamp(),
            "message": message,
        }
        if details is not None:
            payload["details"] = dict(details)
        write_json_atomic(self.result_path, payload)


# -- output ----------------------------------------------------------------------------------


class GuestLog:
    """Copies bytes to stdout (flushed) and logs/guest.log; a broken sink is noted, not fatal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._log: Optional[BinaryIO] = open(path, "ab", buffering=0)  # noqa: SIM115
        self._stdout_at_line_start = True
        self._log_at_line_start = True
        self._stdout_ok = True

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> GuestLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _to_log(self, data: bytes) -> None:
        if self._log is None or not data:
            return
        try:
            self._log.write(data)
        except OSError as exc:
            self._log = None
            _write_stream(sys.stderr, f"[pikaci] cannot write {self.path} any more: {exc}\n")
            return
        self._log_at_line_start = data.endswith(b"\n")

    def _to_stdout(self, data: bytes) -> None:
        if not self._stdout_ok or not data:
            return
        try:
            buffer = getattr(sys.stdout, "buffer", None)
            if buffer is not None:
                buffer.write(data)
            else:
                sys.stdout.write(data.decode("utf-8", "replace"))
            sys.stdout.flush()
        except (OSError, ValueError):
            self._stdout_ok = False  # the host went away; guest.log still has everything
            return
        self._stdout_at_line_start = data.endswith(b"\n")

    def copy(self, data: bytes) -> None:
        """Command output, as read."""
        self._to_stdout(data)
        self._to_log(data)

    def say(self, message: str, *, stderr: bool = False) -> None:
        """A `[pikaci] ...` line, on a line of its own even after a partial output line."""
        line = f"[pikaci] {message}\n"
        log_line = line if self._log_at_line_start else "\n" + line
        if stderr:
            _write_stream(sys.stderr, line)
        else:
            self._to_stdout((line if self._stdout_at_line_start else "\n" + line).encode())
        self._to_log(log_line.encode("utf-8", "replace"))

    def note(self, text: str) -> None:
        """Free text (a traceback) for guest.log only."""
        data = text.encode("utf-8", "replace")
        if not self._log_at_line_start:
            data = b"\n" + data
        self._to_log(data if data.endswith(b"\n") else data + b"\n")


def _write_stream(stream: IO[str], text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass


# -- processes -------------------------------------------------------------------------------


def _process_table() -> Dict[int, Tuple[int, int]]:
    """pid -> (ppid, session id), from /proc."""
    table: Dict[int, Tuple[int, int]] = {}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return table
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        try:
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))
        except (IndexError, ValueError):
            continue
    return table


class ProcessTree:
    """The command and everything it started: its descendants and its sessions' members."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.sessions: Set[int] = {root_pid}  # the command runs in a session of its own

    def members(self) -> Set[int]:
        table = _process_table()
        children: Dict[int, List[int]] = {}
        for pid, (ppid, _sid) in table.items():
            children.setdefault(ppid, []).append(pid)
        found: Set[int] = set()
        todo = [self.root_pid] if self.root_pid in table else []
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(children.get(pid, ()))
        self.sessions.update(table[pid][1] for pid in found)
        self.sessions -= {0, os.getsid(0)}
        found.update(pid for pid, (_ppid, sid) in table.items() if sid in self.sessions)
        found -= {0, 1, os.getpid()}
        return found

    def signal(self, signum: int) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.root_pid, signum)
        for pid in self.members():
            with contextlib.suppress(OSError):
                os.kill(pid, signum)


_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SignalWatch:
    """Records the first SIGTERM/SIGINT/SIGHUP and passes SIGTERM on to the command's tree."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.tree: Optional[ProcessTree] = None
        self._previous: Dict[int, Any] = {}

    def install(self) -> None:
        for signum in _HANDLED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def ignore(self) -> None:
        """While the final records are written (the command is gone by then)."""
        for signum in _HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is None:
            self.received = signum
        if self.tree is not None:
            self.tree.signal(signal.SIGTERM)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""


def _exit_status(returncode: Optional[int]) -> int:
    if returncode is None:
        return 128 + signal.SIGKILL
    return 128 - returncode if returncode < 0 else returncode


def pump_output(proc: subprocess.Popen[bytes], log: GuestLog, watch: SignalWatch) -> int:
    """Copy the command's output line by line until it closed and exited; its exit status.

    A runner signal, or processes that keep the output open after the command exited, get the
    tree a SIGTERM, then SIGKILL after KILL_GRACE_SECS; after that the pipe is abandoned.
    """
    assert proc.stdout is not None
    tree = watch.tree or ProcessTree(proc.pid)
    fd = proc.stdout.fileno()
    pending = bytearray()
    eof = False
    exited_at: Optional[float] = None
    stage = 0  # 0 running, 1 SIGTERM sent, 2 SIGKILL sent
    stage_at = 0.0
    while True:
        now = time.monotonic()
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if eof and exited_at is not None:
            break
        if stage == 0 and (
            watch.received is not None
            or (exited_at is not None and now - exited_at >= OUTPUT_DRAIN_SECS)
        ):
            if watch.received is None:
                log.say("the command exited but processes it started still hold its output")
            stage, stage_at = 1, now
            tree.signal(signal.SIGTERM)
        elif stage == 1 and now - stage_at >= KILL_GRACE_SECS:
            stage, stage_at = 2, now
            tree.signal(signal.SIGKILL)
        elif stage == 2 and now - stage_at >= ABANDON_SECS:
            log.say("the command's processes survived SIGKILL; no longer waiting for them")
            break
        if eof:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=POLL_SECS)
            continue
        ready, _, _ = select.select([fd], [], [], POLL_SECS)
        if not ready:
            continue
        chunk = os.read(fd, CHUNK_BYTES)
        if not chunk:
            eof = True
            continue
        pending += chunk
        while True:
            end = pending.find(b"\n")
            if end < 0:
                break
            log.copy(bytes(pending[: end + 1]))
            del pending[: end + 1]
        if len(pending) >= CHUNK_BYTES:  # a very long line goes out in pieces
            log.copy(bytes(pending))
            pending.clear()
    if pending:
        log.copy(bytes(pending))  # the last line had no newline
    proc.stdout.close()
    return _exit_status(proc.poll())


# -- the run ---------------------------------------------------------------------------------


def _ensure_owner(path: Path, log: GuestLog) -> None:
    info = path.stat()
    if (info.st_uid, info.st_gid) == (GUEST_UID, GUEST_GID):
        return
    try:
        os.chown(path, GUEST_UID, GUEST_GID)
    except OSError as exc:  # read-only and virtiofs mounts refuse; the command may still cope
        reason = exc.strerror or str(exc)
        log.say(f"leaving {path} owned by {info.st_uid}:{info.st_gid} ({reason})")


def prepare_dirs(dirs: Mapping[str, str], run_dir: str, drop: bool, log: GuestLog) -> None:
    """Create the writable directories; owned by pikaci when the command drops to that user."""
    paths = [
        dirs["home_dir"],
        dirs["cargo_home_dir"],
        dirs["cargo_target_dir"],
        dirs["xdg_state_home_dir"],
        str(Path(run_dir) / ARTIFACTS_DIR),
    ]
    for name in paths:
        path = Path(name)
        path.mkdir(parents=True, exist_ok=True)
        if drop:
            _ensure_owner(path, log)


def _require_guest_user() -> None:
    try:
        pwd.getpwnam(GUEST_USER)
    except KeyError:
        raise BootstrapError(
            f"the image has no {GUEST_USER!r} user to run the command as "
            "(set run_as_root, or add the user)"
        ) from None


class Runner:
    def __init__(self, run_dir: str, log: GuestLog) -> None:
        self.run_dir = run_dir
        self.log = log
        self.lifecycle = Lifecycle(run_dir, read_boot_id())
        self.watch = SignalWatch()

    def run(self, request_path: str) -> int:
        self.watch.install()
        try:
            return self._run(request_path)
        finally:
            self.watch.restore()

    def _run(self, request_path: str) -> int:
        proc: Optional[subprocess.Popen[bytes]] = None
        try:
            # a result left by an earlier invocation must never pass for this one's
            with contextlib.suppress(FileNotFoundError):
                self.lifecycle.result_path.unlink()
            kind = os.environ.get(KIND_ENV, "").strip() or DEFAULT_KIND
            self.log.say(f"{kind} guest booted at {local_timestamp()}")
            self.lifecycle.record("booted", f"{kind} guest booted")
            request = load_request(request_path)
            euid = os.geteuid()
            argv = build_argv(request, euid)
            env = build_env(request, self.run_dir, euid)
            dirs = effective_dirs(request, self.run_dir)
            drop = euid == 0 and not request.run_as_root
            if drop:
                _require_guest_user()
            prepare_dirs(dirs, self.run_dir, drop, self.log)
            workspace = dirs["workspace_dir"]
            if not Path(workspace).is_dir():
                raise BootstrapError(f"workspace directory {workspace} does not exist")
            if euid != 0:
                self.log.say(
                    f"the runner already runs unprivileged as uid {euid}; "
                    "running the command directly"
                )
            if self.watch.received is not None:
                self.watch.ignore()
                return self._terminated()
            details = {"command": request.command, "run_as_root": request.run_as_root}
            self.lifecycle.record("starting", "starting test command", details)
            user = "root" if request.run_as_root else GUEST_USER if drop else f"uid {euid}"
            self.log.say(f"running as {user} in {workspace}: {shlex.join(argv)}")
            started = time.monotonic()
            proc = subprocess.Popen(
                argv,
                cwd=workspace,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.watch.tree = ProcessTree(proc.pid)
            if self.watch.received is not None:
                self.watch.tree.signal(signal.SIGTERM)
            exit_code = pump_output(proc, self.log, self.watch)
            elapsed = time.monotonic() - started
        except Exception as exc:
            if proc is not None and proc.poll() is None:
                ProcessTree(proc.pid).signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=KILL_GRACE_SECS)
            self.watch.ignore()
            return self._bootstrap_failed(exc)
        self.watch.ignore()
        if self.watch.received is not None:
            return self._terminated()
        return self._finish(request, exit_code, elapsed)

    def _finish(self, request: GuestRequest, exit_code: int, elapsed: float) -> int:
        details: Dict[str, Any] = {"exit_code": exit_code}
        result_details: Optional[Dict[str, Any]] = None
        if exit_code == 0:
            message = "test passed"
        elif exit_code == EXIT_TIMEOUT and elapsed >= request.timeout_secs:
            message = f"timed out after {request.timeout_secs}s"
            result_details = {"timeout_secs": request.timeout_secs}
        else:
            message = f"test command exited with {exit_code}"
        self.log.say(message)
        try:
            if exit_code == 0:
                self.lifecycle.record("completed", message, details)
                self.lifecycle.result(RESULT_COMPLETED, 0, message)
            else:
                self.lifecycle.record("failed", message, details)
                self.lifecycle.result(RESULT_FAILED, exit_code, message, result_details)
        except Exception as exc:
            return self._bootstrap_failed(exc)
        return exit_code

    def _terminated(self) -> int:
        name = self.watch.name
        exit_code = 128 + (self.watch.received or signal.SIGTERM)
        message = f"runner terminated by {name}"
        self.log.say(message, stderr=True)
        self._record_failure(message, exit_code, {"exit_code": exit_code, "signal": name})
        return exit_code

    def _bootstrap_failed(self, exc: BaseException) -> int:
        reason = str(exc) or type(exc).__name__
        message = f"Incus guest bootstrap failed: {reason}"
        self.log.say(message, stderr=True)
        if not isinstance(exc, (RequestError, BootstrapError, OSError)):
            self.log.note("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        self._record_failure(message, EXIT_BOOTSTRAP, {"exit_code": EXIT_BOOTSTRAP})
        return EXIT_BOOTSTRAP

    def _record_failure(self, message: str, exit_code: int, details: Dict[str, Any]) -> None:
        try:
            self.lifecycle.record("failed", message, details)
        except Exception as exc:
            self.log.say(f"cannot record the failed state: {exc}", stderr=True)
        try:
            self.lifecycle.result(RESULT_FAILED, exit_code, message, details)
        except Exception as exc:
            self.log.say(f"cannot write {self.lifecycle.result_path}: {exc}", stderr=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    run_dir = guest_run_dir()
    try:
        for path in (Path(run_dir) / LOGS_DIR, Path(run_dir) / ARTIFACTS_DIR):
            path.mkdir(parents=True, exist_ok=True)
        log = GuestLog(Path(run_dir) / LOGS_DIR / GUEST_LOG)
    except OSError as exc:
        print(f"[pikaci] Incus guest bootstrap failed: {exc}", file=sys.stderr)
        return EXIT_BOOTSTRAP
    with log:
        return Runner(run_dir, log).run(args[0])


if __name__ == "__main__":
    sys.exit(main())
