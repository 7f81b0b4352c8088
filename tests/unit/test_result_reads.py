"""A job's result.json is read as a lane may have left it: a link to a file elsewhere, a FIFO
or a directory is refused with a message (the job fails), never followed or waited on."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from pikaci.catalog import Execution, Lane, Target
from pikaci.model import RecordError
from pikaci.runtimes.base import JobContext, Outcome
from pikaci.runtimes.guest_layout import collect_runtime_dir, load_result
from pikaci.runtimes.host import HostProcessRuntime
from pikaci.store import StateRoot

RESULT = {
    "status": "completed",
    "exit_code": 0,
    "message": "ok",
    "finished_at": "2026-12-04T00:00:00Z",
}


def job_context(tmp_path: Path) -> JobContext:
    lane = Lane(id="l", command="true", execution=Execution("local", "host_process"))
    return JobContext(
        run_id="r1",
        target=Target(id="t", lanes=[lane]),
        lane=lane,
        state=StateRoot(tmp_path / "state"),
        source_root=tmp_path,
        snapshot_dir=tmp_path,
        content_hash="0" * 64,
        job_dir=tmp_path / "state" / "runs" / "r1" / "jobs" / "l",
        console=lambda line: None,
    )


def plant(ctx: JobContext, kind: str, outside: Path) -> None:
    ctx.result_path.unlink(missing_ok=True)
    if kind == "link":
        ctx.result_path.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(ctx.result_path)
    else:
        ctx.result_path.mkdir()


@pytest.mark.parametrize("kind", ["link", "fifo", "directory"])
def test_a_planted_result_file_is_refused_not_followed_or_waited_on(tmp_path, kind):
    ctx = job_context(tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_bytes(orjson.dumps(RESULT))
    plant(ctx, kind, outside)
    with pytest.raises((OSError, RecordError)):
        load_result(ctx, ctx.result_path)
    outcome = HostProcessRuntime().collect(ctx, Outcome.failure("x", 0))
    assert not outcome.passed and "result.json" in outcome.message
    assert not collect_runtime_dir(ctx, Outcome.failure("x", 0)).passed


def test_a_regular_result_file_is_read(tmp_path):
    ctx = job_context(tmp_path)
    ctx.result_path.write_bytes(orjson.dumps(RESULT))
    assert HostProcessRuntime().collect(ctx, Outcome.failure("x", 1)).passed
