"""Race-safe snapshot publishing on the builder, and leases that keep a snapshot alive.

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
the snapshot lock the same way for the duration of its upload.

Builders need POSIX sh plus coreutils, findutils, util-linux (flock) and GNU tar."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Dict, Iterator, Optional, Tuple

import orjson

from pikaci.builder.held import held_command
from pikaci.builder.layout import (
    LEASE_HELD,
    READ_SIZE,
    SEPARATOR,
    Log,
    RemoteError,
    RemoteLayout,
    quote,
    take_locks,
)
from pikaci.builder.transport import StreamInterrupted, Transport, TransportError
from pikaci.model import UploadRecord
from pikaci.snapshot import SNAPSHOT_METADATA_FILE, SnapshotError, SnapshotMetadata, read_metadata

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
        data = os.read(stdout.fileno(), size if size > 0 else READ_SIZE)
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
    # lanes of a run running at once upload a snapshot once: the others wait and find it
    with _publishing(transport.builder.host, dest):
        return _publish_once(transport, layout, local_snapshot, local, log, timeout_secs, started)


_publish_locks: Dict[Tuple[str, str], threading.Lock] = {}
_publish_locks_guard = threading.Lock()


def _publishing(host: str, dest: str) -> threading.Lock:
    with _publish_locks_guard:
        return _publish_locks.setdefault((host, dest), threading.Lock())


def _publish_once(
    transport: Transport,
    layout: RemoteLayout,
    local_snapshot: Path,
    local: SnapshotMetadata,
    log: Log,
    timeout_secs: Optional[float],
    started: float,
) -> PublishResult:
    tree_id = local.identity
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
            f"if [ -f {quote(marker)} ]; then echo present; echo {SEPARATOR}; cat {quote(marker)}",
            f"elif [ -e {quote(dest)} ]; then echo foreign",
            "else echo absent; fi",
        ]
    )
    output = transport.run("check remote snapshot", script).text
    state, _, body = output.partition(f"\n{SEPARATOR}\n")
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
        state, _, body = result.text.partition(f"\n{SEPARATOR}\n")
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
            *take_locks(layout, layout.snapshot_lock(tree_id)),
            f"root={quote(root)} dest={quote(dest)} tmp={quote(temp)}",
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
            f"echo {SEPARATOR}",
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
    script = _lease_script(layout, tree_id, run_id)
    with held_command(transport, label, script, LEASE_HELD, wait_secs=wait_secs, log=log):
        yield layout.snapshot_dir(tree_id)


def _lease_script(layout: RemoteLayout, tree_id: str, run_id: str) -> str:
    uses = layout.uses_dir(run_id)
    root = layout.snapshot_root(tree_id)
    return "\n".join(
        [
            "set -eu",
            *take_locks(layout, layout.run_lock(run_id), layout.snapshot_lock(tree_id)),
            f"mkdir -p {quote(uses)}",
            f": > {quote(uses + '/' + tree_id)}",
            # recency for keep_snapshots_days
            f"if [ -d {quote(root)} ]; then touch {quote(root)}; fi",
            f"echo {quote(LEASE_HELD)}",
            "exec cat >/dev/null",  # keeps the flocks (fds 7, 9) until released
        ]
    )


def snapshot_upload(
    host: str, tree_id: str, node_id: str, published: PublishResult
) -> UploadRecord:
    """The run record's account of one snapshot publish (or of finding it already there)."""
    return UploadRecord(
        kind="snapshot",
        builder=host,
        subject=tree_id,
        node_id=node_id,
        paths=1 if published.uploaded else 0,
        bytes=published.bytes_sent,
        seconds=round(published.seconds, 3),
        skipped=not published.uploaded,
    )
