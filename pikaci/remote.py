"""The builder's directory layout, race-safe snapshot publishing, leases and remote GC.

Layout under `Builder.remote_work_dir` (everything a run leaves is scoped by its run id):

    snapshots/<tree_id>/snapshot/        content-addressed snapshot, with pikaci-snapshot.json
    snapshots/<tree_id>/.tmp-<pid>-<rnd> one publisher's upload, renamed into place when complete
    runs/<run_id>/jobs/<job_id>/artifacts/
    runs/<run_id>/uses/<tree_id>         the snapshots a run uses: GC keeps them with the run
    locks/gc.lock, locks/run-<run_id>.lock, locks/snapshot-<tree_id>.lock

Publishing (`publish_snapshot`) takes one round trip to read the destination's marker: the same
tree id and content hash means reuse, another one is a hard error, none means upload. The upload
is a second round trip: `tar -cf -` streams into a private temp dir next to the destination,
which is then renamed into place with `mv -T` (no replace). A publisher that loses the race drops
its temp dir and reports the winner's marker; a reader therefore sees no destination or a
complete one. The temp dir is removed when the upload fails or is killed (one killed with
SIGKILL is left to GC); a connection lost mid-stream restarts the upload (the stream cannot be
replayed), up to the transport's retries. Take a lease first (below) when the snapshot must
survive until a lane has used it.

Leases. `hold_snapshot` keeps a shared flock(1) on `locks/run-<run>.lock` and
`locks/snapshot-<tree>.lock` in a remote process that lives exactly as long as the local
holder's SSH session: the transport's watchdog kills it when the session ends, so a crashed
orchestrator never leaves a stale lease and a live one never needs a heartbeat. Publishing holds
the snapshot lock the same way for the duration of its upload. Everyone takes `locks/gc.lock`
shared while acquiring, and GC holds it exclusively for its whole pass, so GC's checks cannot
race a half-taken lease.

GC (`remote_gc`, one round trip) removes `runs/<id>` beyond the newest `keep_runs` (run ids sort
chronologically) unless leased, then `snapshots/<id>` that no remaining run uses, nobody leases
and that was not used within `keep_snapshots_days`; leftover temp dirs of killed publishers go
too. It reports the sizes (`du -sk`) of what it removed.

Builders need POSIX sh plus coreutils, findutils, util-linux (flock) and GNU tar.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import secrets
import shlex
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, List, Optional, Tuple

import orjson

from pikaci.ids import ID_RULE, is_safe_id
from pikaci.model import is_run_id
from pikaci.snapshot import SNAPSHOT_METADATA_FILE, SnapshotError, SnapshotMetadata, read_metadata
from pikaci.transport import Builder, StreamInterrupted, Transport, TransportError

__all__ = [
    "GcResult",
    "PublishResult",
    "RemoteError",
    "RemoteLayout",
    "TarStream",
    "hold_snapshot",
    "publish_snapshot",
    "remote_gc",
]

Log = Callable[[str], None]

LEASE_HELD = "pikaci-lease: held"
GC_LOCK_WAIT_SECS = 120
_SEPARATOR = "---"
_READ_SIZE = 1 << 20


class RemoteError(Exception):
    """A problem with the builder's state (not its connection); the message is one line."""


# -- layout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteLayout:
    """Pure POSIX paths under the builder's work dir; ids are validated, nothing is touched."""

    work_dir: str

    def __post_init__(self) -> None:
        normal = posixpath.normpath(self.work_dir)
        if (
            not self.work_dir.startswith("/")
            or normal != self.work_dir.rstrip("/")
            or normal == "/"
        ):
            raise RemoteError(
                f"remote work dir must be an absolute, normalized path: {self.work_dir!r}"
            )

    @classmethod
    def for_builder(cls, builder: Builder) -> RemoteLayout:
        return cls(builder.remote_work_dir.rstrip("/"))

    @property
    def snapshots_dir(self) -> str:
        return f"{self.work_dir}/snapshots"

    @property
    def runs_dir(self) -> str:
        return f"{self.work_dir}/runs"

    @property
    def locks_dir(self) -> str:
        return f"{self.work_dir}/locks"

    @property
    def gc_lock(self) -> str:
        return f"{self.locks_dir}/gc.lock"

    def snapshot_root(self, tree_id: str) -> str:
        return f"{self.snapshots_dir}/{_checked_id('tree', tree_id)}"

    def snapshot_dir(self, tree_id: str) -> str:
        return f"{self.snapshot_root(tree_id)}/snapshot"

    def snapshot_lock(self, tree_id: str) -> str:
        return f"{self.locks_dir}/snapshot-{_checked_id('tree', tree_id)}.lock"

    def run_dir(self, run_id: str) -> str:
        if not is_run_id(run_id):
            raise RemoteError(f"invalid run id {run_id!r}: expected YYYYmmddTHHMMSSZ-<8 hex>")
        return f"{self.runs_dir}/{run_id}"

    def run_lock(self, run_id: str) -> str:
        self.run_dir(run_id)
        return f"{self.locks_dir}/run-{run_id}.lock"

    def uses_dir(self, run_id: str) -> str:
        return f"{self.run_dir(run_id)}/uses"

    def job_dir(self, run_id: str, job_id: str) -> str:
        return f"{self.run_dir(run_id)}/jobs/{_checked_id('job', job_id)}"

    def artifacts_dir(self, run_id: str, job_id: str) -> str:
        return f"{self.job_dir(run_id, job_id)}/artifacts"


def _checked_id(kind: str, value: str) -> str:
    if not is_safe_id(value):
        raise RemoteError(f"invalid {kind} id {value!r}: expected {ID_RULE}")
    return value


def _q(text: str) -> str:
    return shlex.quote(text)


def _take_locks(layout: RemoteLayout, *locks: str) -> List[str]:
    """Shell lines taking shared flocks on `locks` (fds 7, 9), entered through gc.lock."""
    lines = [f"mkdir -p {_q(layout.locks_dir)}", f"exec 8>{_q(layout.gc_lock)}", "flock -s 8"]
    for fd, lock in zip((7, 9), locks):
        lines += [f"exec {fd}>{_q(lock)}", f"flock -s {fd}"]
    return [*lines, "flock -u 8", "exec 8>&-"]


# -- publishing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishResult:
    remote_path: str
    uploaded: bool
    bytes_sent: int
    seconds: float


class TarStream:
    """`tar -cf -` of a local directory as a stdin source for `Transport.run`.

    At the end of the archive it checks tar's exit status and raises instead of returning the
    final empty read, so a failed archive never reaches the builder as a complete one.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # closed in close(): the file outlives this call by design
        self._errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            ["tar", "-C", str(root), "-cf", "-", "."],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )

    def read(self, size: int = -1, /) -> bytes:
        stdout = self._proc.stdout
        assert stdout is not None
        data = os.read(stdout.fileno(), size if size > 0 else _READ_SIZE)
        if not data and self._proc.wait() != 0:
            self._errors.seek(0)
            detail = self._errors.read().decode("utf-8", "replace").strip().splitlines()
            raise RemoteError(
                f"local tar of {self.root} failed (exit {self._proc.returncode})"
                + (f": {detail[-1]}" if detail else "")
            )
        return data

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._errors.close()

    def __enter__(self) -> TarStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish_snapshot(
    transport: Transport,
    layout: RemoteLayout,
    local_snapshot: Path,
    tree_id: str,
    log: Log,
    *,
    timeout_secs: Optional[float] = None,
) -> PublishResult:
    """Make `<work>/snapshots/<tree_id>/snapshot` hold `local_snapshot`; see the module docs."""
    started = time.monotonic()
    local = _local_metadata(local_snapshot, tree_id)
    dest = layout.snapshot_dir(tree_id)
    existing = _remote_marker(transport, layout, tree_id)
    if existing is not None:
        _check_same(existing, local, dest)
        log(f"remote snapshot already available at {dest} (content hash {local.content_hash})")
        return PublishResult(dest, False, 0, time.monotonic() - started)
    uploaded, sent = _upload(transport, layout, local_snapshot, local, log, timeout_secs)
    seconds = time.monotonic() - started
    verb = "published" if uploaded else "another publisher won; reusing"
    log(f"{verb} remote snapshot {dest}: {sent} bytes sent in {seconds:.2f}s")
    return PublishResult(dest, uploaded, sent, seconds)


def _local_metadata(local_snapshot: Path, tree_id: str) -> SnapshotMetadata:
    try:
        meta = read_metadata(local_snapshot)
    except SnapshotError as exc:
        raise RemoteError(str(exc)) from None
    if meta is None:
        raise RemoteError(f"{local_snapshot} has no {SNAPSHOT_METADATA_FILE}; not a snapshot")
    if meta.identity != tree_id:
        raise RemoteError(f"{local_snapshot} holds tree {meta.identity}, not {tree_id}")
    return meta


def _remote_marker(
    transport: Transport, layout: RemoteLayout, tree_id: str
) -> Optional[SnapshotMetadata]:
    """The destination's marker (one round trip); None when there is no destination."""
    dest = layout.snapshot_dir(tree_id)
    marker = f"{dest}/{SNAPSHOT_METADATA_FILE}"
    script = "\n".join(
        [
            "set -eu",
            f"if [ -f {_q(marker)} ]; then echo present; echo {_SEPARATOR}; cat {_q(marker)}",
            f"elif [ -e {_q(dest)} ]; then echo foreign",
            "else echo absent; fi",
        ]
    )
    output = transport.run("check remote snapshot", script).text
    state, _, body = output.partition(f"\n{_SEPARATOR}\n")
    state = state.strip()
    if state == "absent":
        return None
    if state == "foreign":
        raise RemoteError(f"{dest} exists without {SNAPSHOT_METADATA_FILE}; remove it")
    return _parse_marker(body, dest)


def _parse_marker(body: str, dest: str) -> SnapshotMetadata:
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return SnapshotMetadata.from_dict(data)
    except ValueError as exc:
        raise RemoteError(f"corrupt {SNAPSHOT_METADATA_FILE} in {dest}: {exc}") from None


def _check_same(remote: SnapshotMetadata, local: SnapshotMetadata, dest: str) -> None:
    if remote.identity != local.identity or remote.content_hash != local.content_hash:
        raise RemoteError(
            f"remote snapshot hash mismatch at {dest}: the builder has tree {remote.identity} "
            f"(content hash {remote.content_hash}), this run has tree {local.identity} "
            f"(content hash {local.content_hash}); refusing to reuse it"
        )


def _upload(
    transport: Transport,
    layout: RemoteLayout,
    local_snapshot: Path,
    local: SnapshotMetadata,
    log: Log,
    timeout_secs: Optional[float],
) -> Tuple[bool, int]:
    """(uploaded, bytes sent); restarts the stream when the connection drops mid-way."""
    tree_id = local.identity
    attempts = transport.retries + 1
    for attempt in range(attempts):
        if attempt:
            delay = transport.backoff_secs * (2 ** (attempt - 1))
            log(f"publish snapshot: restarting the upload in {delay:g}s ({attempt}/{attempts - 1})")
            time.sleep(delay)
        temp = f"{layout.snapshot_root(tree_id)}/.tmp-{os.getpid()}-{secrets.token_hex(6)}"
        with TarStream(local_snapshot) as stream:
            try:
                result = transport.run(
                    "publish snapshot",
                    _publish_script(layout, tree_id, temp),
                    stdin=stream,
                    timeout_secs=timeout_secs,
                )
            except StreamInterrupted as exc:
                log(str(exc))
                continue
        state, _, body = result.text.partition(f"\n{_SEPARATOR}\n")
        dest = layout.snapshot_dir(tree_id)
        _check_same(_parse_marker(body, dest), local, dest)
        return state.strip().endswith("published"), result.stdin_bytes
    raise TransportError(
        f"publish snapshot: the connection to {transport.builder.host} dropped "
        f"during each of {attempts} upload(s)"
    )


def _publish_script(layout: RemoteLayout, tree_id: str, temp: str) -> str:
    root, dest = layout.snapshot_root(tree_id), layout.snapshot_dir(tree_id)
    marker = SNAPSHOT_METADATA_FILE
    return "\n".join(
        [
            "set -eu",
            *_take_locks(layout, layout.snapshot_lock(tree_id)),
            f"root={_q(root)} dest={_q(dest)} tmp={_q(temp)}",
            # nothing half-written survives a failure or a kill (KILL leaves it to GC); a
            # second TERM (timeout forwards one) must not cut the cleanup short
            """trap 'trap "" TERM INT HUP; rm -rf "$tmp"' EXIT""",
            """trap 'trap "" TERM INT HUP; exit 143' TERM INT HUP""",
            'mkdir -p "$root"',
            'if [ -e "$dest" ]; then',
            "  echo reused",  # another publisher finished first: the payload is not needed
            "else",
            '  mkdir "$tmp"',
            '  tar -C "$tmp" -xpf -',
            f'  if [ ! -f "$tmp/{marker}" ]; then echo "upload lacks {marker}"; exit 3; fi',
            '  if mv -T "$tmp" "$dest" 2>/dev/null; then echo published',
            f'  elif [ -f "$dest/{marker}" ]; then echo reused',
            '  else echo "cannot rename $tmp to $dest"; exit 4; fi',
            "fi",
            f"echo {_SEPARATOR}",
            f'cat "$dest/{marker}"',
        ]
    )


# -- leases -----------------------------------------------------------------------------------


@contextlib.contextmanager
def hold_snapshot(
    transport: Transport,
    layout: RemoteLayout,
    tree_id: str,
    run_id: str,
    *,
    log: Optional[Log] = None,
    wait_secs: float = 60.0,
) -> Iterator[str]:
    """While open, GC keeps `snapshots/<tree_id>` and `runs/<run_id>`; yields the snapshot dir.

    Take the lease before publishing: then the snapshot cannot vanish between publish and use.
    """
    label = f"lease {tree_id[:12]} for {run_id}"
    release_read, release_write = os.pipe()
    held = threading.Event()
    failures: List[BaseException] = []

    def on_line(line: str) -> None:
        if line == LEASE_HELD:
            held.set()

    def hold() -> None:
        with os.fdopen(release_read, "rb") as release:
            try:
                transport.run(
                    label, _lease_script(layout, tree_id, run_id), stdin=release, on_line=on_line
                )
            except BaseException as exc:
                failures.append(exc)
            finally:
                held.set()

    thread = threading.Thread(target=hold, name=label, daemon=True)
    thread.start()
    try:
        if not held.wait(wait_secs):
            raise RemoteError(f"{label}: not granted within {wait_secs:g}s")
        if failures:
            raise RemoteError(f"{label}: {failures[0]}") from failures[0]
        yield layout.snapshot_dir(tree_id)
    finally:
        os.close(release_write)  # end of stdin: the remote holder exits, the flocks go
        thread.join(30)
    if failures and log is not None:
        log(f"{label}: lost while held: {failures[0]}")


def _lease_script(layout: RemoteLayout, tree_id: str, run_id: str) -> str:
    uses = layout.uses_dir(run_id)
    root = layout.snapshot_root(tree_id)
    return "\n".join(
        [
            "set -eu",
            *_take_locks(layout, layout.run_lock(run_id), layout.snapshot_lock(tree_id)),
            f"mkdir -p {_q(uses)}",
            f": > {_q(uses + '/' + tree_id)}",
            f"if [ -d {_q(root)} ]; then touch {_q(root)}; fi",  # recency for keep_snapshots_days
            f"echo {_q(LEASE_HELD)}",
            "exec cat >/dev/null",  # keeps the flocks (fds 7, 9) until released
        ]
    )


# -- garbage collection -----------------------------------------------------------------------


@dataclass
class GcResult:
    removed_runs: List[str] = field(default_factory=list)
    removed_snapshots: List[str] = field(default_factory=list)
    kept_in_use: List[str] = field(default_factory=list)  # "runs/<id>", "snapshots/<id>"
    freed_bytes: int = 0
    removed_temps: List[str] = field(default_factory=list)
    kept_snapshots: List[str] = field(default_factory=list)  # referenced or recently used


def remote_gc(
    transport: Transport,
    layout: RemoteLayout,
    keep_runs: int,
    keep_snapshots_days: float,
    log: Log,
) -> GcResult:
    """Remove old runs and unused snapshots from the builder in one round trip."""
    if keep_runs < 0 or keep_snapshots_days < 0:
        raise RemoteError("keep_runs and keep_snapshots_days must be zero or positive")
    minutes = math.ceil(keep_snapshots_days * 24 * 60)
    result = transport.run("remote gc", _gc_script(layout, keep_runs, minutes))
    gc = _parse_gc(result.text)
    log(
        f"remote gc on {transport.builder.host}: removed {len(gc.removed_runs)} run(s), "
        f"{len(gc.removed_snapshots)} snapshot(s), {len(gc.removed_temps)} temp dir(s), "
        f"freed {gc.freed_bytes} bytes; in use: {', '.join(gc.kept_in_use) or 'nothing'}"
    )
    return gc


_GC_BODY = r"""
[ -d "$work" ] || exit 0
cd "$work"
mkdir -p locks
exec 8>locks/gc.lock
if ! flock -w "$wait" -x 8; then echo "gc: locks/gc.lock still busy after ${wait}s"; exit 75; fi
kb() { du -sk "$1" 2>/dev/null | cut -f1; }
unused() { flock -n -x "$1" true; }
set -- $(ls -1 runs 2>/dev/null | grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$' | sort)
drop=$(($# - keep))
for r in "$@"; do
  [ "$drop" -gt 0 ] || break
  drop=$((drop - 1))
  if unused "locks/run-$r.lock"; then
    k=$(kb "runs/$r"); rm -rf "runs/$r"; rm -f "locks/run-$r.lock"
    echo "removed run $r ${k:-0}"
  else
    echo "in-use run $r"
  fi
done
for s in $(ls -1 snapshots 2>/dev/null | grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*$'); do
  [ -d "snapshots/$s" ] || continue
  if ! unused "locks/snapshot-$s.lock"; then echo "in-use snapshot $s"; continue; fi
  for t in "snapshots/$s"/.tmp-*; do
    [ -e "$t" ] || continue
    k=$(kb "$t"); rm -rf "$t"; echo "removed temp $s/${t##*/} ${k:-0}"
  done
  set -- runs/*/uses/"$s"
  if [ -e "$1" ]; then echo "kept snapshot $s referenced"; continue; fi
  if [ "$minutes" -gt 0 ] && [ -n "$(find "snapshots/$s" -maxdepth 0 -mmin -"$minutes")" ]; then
    echo "kept snapshot $s recent"; continue
  fi
  k=$(kb "snapshots/$s"); rm -rf "snapshots/$s"; rm -f "locks/snapshot-$s.lock"
  echo "removed snapshot $s ${k:-0}"
done
"""


def _gc_script(layout: RemoteLayout, keep_runs: int, minutes: int) -> str:
    settings = (
        f"work={_q(layout.work_dir)} keep={keep_runs} minutes={minutes} wait={GC_LOCK_WAIT_SECS}"
    )
    return "set -eu\nexport LC_ALL=C\n" + settings + _GC_BODY


def _parse_gc(output: str) -> GcResult:
    gc = GcResult()
    for line in output.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "removed" and words[3].isdigit():
            gc.freed_bytes += int(words[3]) * 1024
            target = {"run": gc.removed_runs, "snapshot": gc.removed_snapshots}
            target.get(words[1], gc.removed_temps).append(words[2])
        elif len(words) == 3 and words[0] == "in-use":
            gc.kept_in_use.append(f"{words[1]}s/{words[2]}")
        elif len(words) == 4 and words[:2] == ["kept", "snapshot"]:
            gc.kept_snapshots.append(words[2])
    return gc
