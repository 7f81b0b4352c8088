"""Pure changes to run and job records: new jobs, settling, the final status."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from pikaci.catalog import Lane, Target
from pikaci.model import RUN_FAILED, RUN_PASSED, RUN_RUNNING, RUN_SKIPPED, JobRecord, RunRecord
from pikaci.plan import LaneInputs, execute_node
from pikaci.store import GUEST_LOG, HOST_LOG
from pikaci.timestamps import now_timestamp
from pikaci.vocabulary import recorded_execution


def new_job(target: Target, lane: Lane, job_dir: Path) -> JobRecord:
    """A running job whose logs and artifacts live in `job_dir`."""
    recorded = recorded_execution(lane.execution)
    return JobRecord(
        id=lane.id,
        description=lane.description or f"lane {lane.id} of target {target.id}",
        status=RUN_RUNNING,
        executor=recorded.executor,
        placement=recorded.placement,
        runtime=recorded.runtime,
        sandbox=recorded.sandbox,
        plan_node_id=execute_node(lane.id),
        timeout_secs=lane.timeout_secs,
        host_log_path=str(job_dir / HOST_LOG),
        guest_log_path=str(job_dir / "artifacts" / GUEST_LOG),
        started_at=now_timestamp(),
        target_id=target.id,
        artifacts_dir=str(job_dir / "artifacts"),
    )


def unstarted_outcome(
    interrupted: Optional[str],
    own_failure: Optional[str],
    failed_prepares: Mapping[str, str],
    failed_lanes: List[str],
) -> Tuple[str, str]:
    """Status and message of a planned job that never started, by the first reason that holds."""
    if interrupted:
        return RUN_SKIPPED, f"not run: interrupted by {interrupted}"
    if own_failure is not None:
        return RUN_FAILED, own_failure
    if failed_prepares:
        node, message = next(iter(failed_prepares.items()))
        return (
            RUN_SKIPPED,
            f"not run because prepare phase stopped after `{node}` failed: {message}",
        )
    if failed_lanes:
        return RUN_SKIPPED, "not run because an earlier execute node failed"
    return RUN_SKIPPED, "not run: doit did not reach this lane"


def adopt_snapshot(record: RunRecord, inputs: LaneInputs) -> None:
    """The run's snapshot fields come from its first lane, unless already set (a rerun)."""
    if record.snapshot_dir:
        return
    record.snapshot_dir = inputs.snapshot_dir
    record.content_hash = inputs.content_hash
    record.git_head, record.git_dirty = inputs.git_head, inputs.git_dirty


def mark_failed_early(record: RunRecord, job: JobRecord) -> None:
    # the run is failed as soon as any job is
    if job.status == RUN_FAILED and record.status == RUN_RUNNING:
        record.status = RUN_FAILED


def settle(job: JobRecord, interrupted: Optional[str]) -> JobRecord:
    """A job still running when the run closes: its collect step never ran."""
    if interrupted:
        finished_command = job.message if job.exit_code is not None else None
        job.status = RUN_FAILED
        job.message = f"interrupted by {interrupted}"
        if finished_command:
            job.message += f" before its artifacts were collected ({finished_command})"
    elif job.exit_code is None:
        job.status = RUN_FAILED
        job.message = job.message or "job ended without a recorded outcome"
    else:
        job.status = RUN_PASSED if job.exit_code == 0 else RUN_FAILED
    job.finished_at = now_timestamp()
    return job


def finalize(record: RunRecord, interrupted: Optional[str], order: Dict[str, int]) -> None:
    # jobs were appended as they started; the final record lists them in catalog order
    record.jobs.sort(key=lambda job: order.get(job.id, len(order)))
    statuses = [job.status for job in record.jobs]
    if interrupted:
        record.status = RUN_FAILED
        record.message = f"interrupted by {interrupted}"
    elif RUN_FAILED in statuses:
        record.status = RUN_FAILED
    elif statuses and all(status == RUN_SKIPPED for status in statuses):
        record.status = RUN_SKIPPED
    else:
        record.status = RUN_PASSED
    record.finished_at = now_timestamp()
