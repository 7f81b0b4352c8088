"""What every runtime gets (a job context) and gives back (an outcome)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from pikaci.builder.transport import Builder
from pikaci.catalog import Lane, Target
from pikaci.model import (
    RUN_FAILED,
    RUN_PASSED,
    RemoteLinuxVmExecution,
    TerminalResult,
    UploadRecord,
)
from pikaci.payloads.staged import StagedOutput
from pikaci.store import GUEST_LOG, HOST_LOG, RESULT_FILE, StateRoot, write_json
from pikaci.timestamps import now_timestamp

LOG_PREFIX = "[pikaci] "


class HostLog:
    """Append-only `host.log` of one job; orchestrator lines carry the `[pikaci] ` prefix."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)

    def note(self, message: str) -> None:
        self.write_raw(f"{LOG_PREFIX}{message}\n".encode())

    def write_raw(self, data: bytes) -> None:
        with self._lock, open(self.path, "ab") as handle:
            handle.write(data)


@dataclass
class JobContext:
    """One lane's execution in one run: where things go and how to talk back."""

    run_id: str
    target: Target
    lane: Lane
    state: StateRoot
    source_root: Path
    snapshot_dir: Path
    content_hash: str
    job_dir: Path
    console: Callable[[str], None]
    # called with a process group id when one starts (None when it is gone), so an interrupt
    # can kill what the lane left running
    track_process: Callable[[Optional[int]], None] = lambda pgid: None
    payloads: Sequence[StagedOutput] = ()
    # the snapshot as the lane sees it (content + executable bits); defaults to content_hash
    snapshot_id: str = ""
    builder: Optional[Builder] = None  # remote placements: where the lane runs
    # remote placements: account for a transfer to the builder in the run record
    record_upload: Callable[[UploadRecord], None] = lambda upload: None
    # guest runtimes: the job record's `remote_linux_vm_execution`, as its phases complete
    record_vm_execution: Callable[[RemoteLinuxVmExecution], None] = lambda execution: None

    def __post_init__(self) -> None:
        if not self.snapshot_id:
            self.snapshot_id = self.content_hash
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.guest_log_path.touch(exist_ok=True)
        self.host_log = HostLog(self.host_log_path)

    @property
    def host_log_path(self) -> Path:
        return self.job_dir / HOST_LOG

    @property
    def artifacts_dir(self) -> Path:
        return self.job_dir / "artifacts"

    @property
    def guest_log_path(self) -> Path:
        return self.artifacts_dir / GUEST_LOG

    @property
    def result_path(self) -> Path:
        return self.artifacts_dir / RESULT_FILE


@dataclass(frozen=True)
class Outcome:
    status: str  # passed | failed
    exit_code: Optional[int]
    message: str

    @property
    def passed(self) -> bool:
        return self.status == RUN_PASSED

    def to_result(self) -> TerminalResult:
        return TerminalResult(
            status="completed" if self.passed else "failed",
            exit_code=self.exit_code,
            finished_at=now_timestamp(),
            message=self.message,
        )

    @classmethod
    def from_result(cls, result: TerminalResult) -> Outcome:
        return cls(status=result.job_status, exit_code=result.exit_code, message=result.message)

    @classmethod
    def failure(cls, message: str, exit_code: Optional[int] = None) -> Outcome:
        return cls(status=RUN_FAILED, exit_code=exit_code, message=message)


def write_result(ctx: JobContext, outcome: Outcome) -> None:
    write_json(ctx.result_path, outcome.to_result().to_dict())


class LaneRuntime(Protocol):
    """A placement x runtime implementation.

    `execute` prepares the runtime, runs the lane command under its timeout and returns the
    outcome; it tears down whatever it started if it raises. `collect` brings logs and
    artifacts into the job directory, tears the runtime down (always, also after a failure)
    and returns the final outcome, which the job record then carries.
    """

    def execute(self, ctx: JobContext) -> Outcome: ...

    def collect(self, ctx: JobContext, outcome: Outcome) -> Outcome: ...
