"""Log metadata records and the lifecycle events printed in `jsonl` mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from pikaci.model import RUN_RUNNING, Decoder, JobRecord, Record, RunRecord, list_of

# -- logs metadata and lifecycle events -----------------------------------------------------


@dataclass
class JobLogsMetadata(Record):
    id: str = ""
    host_log_path: str = ""
    guest_log_path: str = ""
    host_log_exists: bool = False
    guest_log_exists: bool = False


@dataclass
class RunLogsMetadata(Record):
    run_id: str = ""
    status: str = RUN_RUNNING
    jobs: List[JobLogsMetadata] = field(default_factory=list)

    @classmethod
    def _field_decoders(cls) -> Dict[str, Decoder]:
        return {"jobs": list_of(JobLogsMetadata)}


def run_started_event(run: RunRecord) -> Dict[str, Any]:
    return {
        "event": "run_started",
        "run_id": run.run_id,
        "created_at": run.created_at,
        "rerun_of": run.rerun_of,
        "target_id": run.target_id,
        "target_description": run.target_description,
    }


def job_event(kind: str, run_id: str, job: JobRecord) -> Dict[str, Any]:
    return {"event": kind, "run_id": run_id, "job": job.to_dict()}


def run_finished_event(run: RunRecord) -> Dict[str, Any]:
    return {"event": "run_finished", "run": run.to_dict()}
