"""The builder's directory layout and the locks everyone takes there.

Layout under `Builder.remote_work_dir` (everything a run leaves is scoped by its run id):

    snapshots/<tree_id>/snapshot/        content-addressed snapshot, with pikaci-snapshot.json
    snapshots/<tree_id>/.tmp-<pid>-<rnd> one publisher's upload, renamed into place when complete
    runs/<run_id>/jobs/<job_id>/artifacts/
    runs/<run_id>/uses/<tree_id>         the snapshots a run uses: GC keeps them with the run
    locks/gc.lock, locks/run-<run_id>.lock, locks/snapshot-<tree_id>.lock

Everyone takes `locks/gc.lock` shared while acquiring a lease, and GC holds it exclusively for
its whole pass, so GC's checks cannot race a half-taken lease."""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from typing import Callable, List

from pikaci.builder.transport import Builder
from pikaci.ids import ID_RULE, is_safe_id
from pikaci.timestamps import is_run_id

Log = Callable[[str], None]

LEASE_HELD = "pikaci-lease: held"
GC_LOCK_WAIT_SECS = 120
SEPARATOR = "---"
READ_SIZE = 1 << 20


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

    def gcroots_dir(self, run_id: str) -> str:
        """Nix GC roots of the payloads the run uses here: removed with the run (gc-remote), and
        never shared with another repository's or state root's run."""
        return f"{self.run_dir(run_id)}/gcroots"

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


def quote(text: str) -> str:
    return shlex.quote(text)


def take_locks(layout: RemoteLayout, *locks: str) -> List[str]:
    """Shell lines taking shared flocks on `locks` (fds 7, 9), entered through gc.lock."""
    lines = [f"mkdir -p {quote(layout.locks_dir)}", f"exec 8>{quote(layout.gc_lock)}", "flock -s 8"]
    for fd, lock in zip((7, 9), locks):
        lines += [f"exec {fd}>{quote(lock)}", f"flock -s {fd}"]
    return [*lines, "flock -u 8", "exec 8>&-"]
