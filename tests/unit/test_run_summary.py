"""pikaci.run_summary over crafted state roots: skipped and corrupt runs, hostile record text
and planted files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from pikaci.model import JobRecord
from pikaci.run_summary import (
    FAILED_LOG_TAIL,
    STATUS_CORRUPT,
    SummaryError,
    markdown_text,
    output,
    summarise,
    summary_command,
)
from pikaci.store import RunWriter, StateRoot
from tests.fixtures.serving import make_run, rid


def run_summary(state: StateRoot, run_id: str = "", **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    options = {"target": "", "artifact_dir": "", "github_output": "", "step_summary": "",
               "allow_missing": False, **kwargs}  # fmt: skip
    code = summary_command(state, run_id, environ={}, out=out, err=err, **options)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


def test_a_skipped_run_without_jobs(state_root: StateRoot, tmp_path: Path) -> None:
    make_run(state_root, rid(1), status="skipped", jobs=())
    outputs = tmp_path / "out"
    code, markdown, _ = run_summary(state_root, github_output=str(outputs))
    assert code == 0
    assert "| result | skipped |" in markdown and "| job |" not in markdown
    lines = outputs.read_text().splitlines()
    assert "run_status=skipped" in lines and "failed_jobs=" in lines


def test_a_corrupt_record_is_reported_and_fails_the_step(state_root: StateRoot, tmp_path) -> None:
    make_run(state_root, rid(1))
    (state_root.runs_dir / rid(1) / "run.json").write_text('{"run_id": "trunc')
    outputs = tmp_path / "out"
    artifacts = tmp_path / "artifacts"
    code, markdown, _ = run_summary(
        state_root, rid(1), github_output=str(outputs), artifact_dir=str(artifacts)
    )
    assert code == 1
    assert markdown.startswith(f"### pikaci run `{rid(1)}`\n\nThe run record cannot be read: ")
    assert "invalid JSON" in markdown
    assert f"run_status={STATUS_CORRUPT}" in outputs.read_text().splitlines()
    assert (artifacts / "run.json").read_text() == '{"run_id": "trunc'  # kept for a person


def test_the_newest_readable_run_of_the_target(state_root: StateRoot) -> None:
    make_run(state_root, rid(1), target="main")
    make_run(state_root, rid(2), target="other")
    make_run(state_root, rid(3), target="main")
    (state_root.runs_dir / rid(3) / "run.json").write_text("{")
    code, markdown, err = run_summary(state_root, target="main")
    assert code == 0 and markdown.startswith(f"### pikaci run `{rid(1)}`")
    assert "warning: skipping unreadable run" in err
    assert run_summary(state_root)[1].startswith(f"### pikaci run `{rid(2)}`")
    with pytest.raises(SummaryError, match="no run of target `gone` under"):
        run_summary(state_root, target="gone")


def test_record_text_cannot_break_the_markdown_or_add_outputs(state_root, tmp_path) -> None:
    make_run(state_root, rid(1), jobs=())
    writer = RunWriter(state_root.run_dir(rid(1)))
    writer.write_job(
        JobRecord(
            id="a",
            status="failed",
            message="line one\n| evil | cell |\n<img src=x onerror=alert(1)> `code`",
        )
    )
    summary = summarise(state_root, rid(1))
    row = next(line for line in summary.markdown.splitlines() if line.startswith("| `a`"))
    assert row.count(" | ") == 3  # four cells, the message's pipes escaped
    assert "<img" not in row and "&lt;img" in row and "\\| evil \\|" in row
    assert "job_a_status=failed" in summary.outputs
    # statuses are checked when the record is read; any other text stays on its line
    assert output("target_id", "x\nrun_status=passed") == "target_id=x run_status=passed"
    assert markdown_text("x" * 1000).endswith("…") and len(markdown_text("x" * 1000)) == 300


def test_planted_links_and_fifos_are_not_copied_or_printed(state_root, tmp_path) -> None:
    make_run(state_root, rid(1), status="failed", jobs=("a", "b"), job_status="failed")
    secret = tmp_path / "secret"
    secret.write_text("top secret\n")
    host_a = state_root.job_dir(rid(1), "a") / "host.log"
    host_a.unlink()
    host_a.symlink_to(secret)
    guest_b = state_root.job_dir(rid(1), "b") / "artifacts" / "guest.log"
    guest_b.unlink()
    os.mkfifo(guest_b)
    artifacts = tmp_path / "artifacts"
    code, _, err = run_summary(state_root, rid(1), artifact_dir=str(artifacts))
    assert code == 0
    assert "top secret" not in err
    assert not (artifacts / "jobs" / "a" / "host.log").exists()
    assert not (artifacts / "jobs" / "b" / "guest.log").exists()
    assert (artifacts / "jobs" / "b" / "host.log").read_text() == "host of b\n"
    assert f"warning: not copying {host_a}" in err and f"warning: not copying {guest_b}" in err
    assert "(no readable host log: " in err


def test_a_long_failed_log_prints_its_end(state_root: StateRoot, tmp_path) -> None:
    make_run(state_root, rid(1), status="failed", job_status="failed")
    host = state_root.job_dir(rid(1), "a") / "host.log"
    host.write_bytes(b"a" * 100 + b"b" * FAILED_LOG_TAIL + b"\n")
    _, _, err = run_summary(state_root, rid(1))
    assert "(101 bytes before this are in the artifact's host.log)" in err
    assert "a" * 10 not in err.split("=====\n", 1)[1]
