"""`pikaci summary` and `doit summary` on a real run of a passing and a failing lane, as a CI
step calls them: the Markdown in $GITHUB_STEP_SUMMARY, the outputs in $GITHUB_OUTPUT, the
artifact directory, and the failed job's host log in the CI log."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.fixtures.projects import LaneSpec


@pytest.fixture
def failed_run(make_project):
    project = make_project(
        [
            LaneSpec("ok", 'echo fine-here; echo from-the-guest > "$ARTIFACTS/guest.log"'),
            LaneSpec("broken", "echo broken-output-line; exit 3"),
        ]
    )
    done = project.doit("run", "--continue", "target:main")
    assert done.returncode != 0
    (run_id,) = project.run_ids()
    return project, run_id


def outputs_of(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_a_ci_step_summarises_the_newest_run(failed_run, tmp_path: Path) -> None:
    project, run_id = failed_run
    step_summary, github_output = tmp_path / "summary.md", tmp_path / "outputs"
    step_summary.write_text("earlier step\n")
    artifacts = tmp_path / "artifacts"
    env = {"GITHUB_STEP_SUMMARY": str(step_summary), "GITHUB_OUTPUT": str(github_output)}
    done = project.pikaci("summary", "--artifact-dir", str(artifacts), env=env)
    assert done.returncode == 0, done.stderr  # the run's own step reports the failure
    assert done.stdout == ""  # the Markdown went to the step summary
    markdown = step_summary.read_text()
    assert markdown.startswith("earlier step\n### pikaci run `" + run_id + "`\n")
    assert "| result | **failed** |" in markdown
    assert "| `ok` | passed |" in markdown and "| `broken` | failed |" in markdown
    record = project.run_record(run_id)
    outputs = outputs_of(github_output)
    assert outputs["run_id"] == run_id and outputs["run_status"] == "failed"
    assert outputs["artifact_name"] == f"pikaci-run-{run_id}"
    assert outputs["job_ok_status"] == "passed" and outputs["job_broken_status"] == "failed"
    assert outputs["failed_jobs"] == "broken" and outputs["target_id"] == record["target_id"]
    assert int(outputs["run_duration_seconds"]) >= 0
    copied = sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*") if p.is_file())
    assert copied == [
        "jobs/broken/guest.log", "jobs/broken/host.log", "jobs/ok/guest.log",
        "jobs/ok/host.log", "plan.json", "prepared-outputs.json", "run.json",
    ]  # fmt: skip
    assert orjson.loads((artifacts / "run.json").read_bytes()) == record
    assert (artifacts / "jobs/ok/guest.log").read_text() == "from-the-guest\n"
    # the failed job's host log is in the CI log, the passing one's is not
    banner = f"===== pikaci host log: run={run_id} job=broken =====\n"
    assert banner in done.stderr and "broken-output-line" in done.stderr
    assert "fine-here" not in done.stderr
    assert f"copied 7 file(s) to {artifacts}" in done.stderr


def test_without_ci_files_the_markdown_goes_to_stdout(failed_run) -> None:
    project, run_id = failed_run
    done = project.pikaci("summary", run_id, "--target", "ignored-when-a-run-is-named")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"### pikaci run `{run_id}`")
    missing = project.pikaci("summary", "--target", "no-such-target")
    assert missing.returncode == 1
    assert missing.stderr.startswith("pikaci: error: no run of target `no-such-target` under ")
    allowed = project.pikaci("summary", "--target", "no-such-target", "--allow-missing")
    assert allowed.returncode == 0 and "nothing to report" in allowed.stderr
    bad = project.pikaci("summary", "../../etc")
    assert bad.returncode == 1 and "invalid run id" in bad.stderr


def test_the_doit_task_is_the_same_and_never_a_default(failed_run, tmp_path: Path) -> None:
    project, run_id = failed_run
    github_output = tmp_path / "outputs"
    done = project.doit(
        "summary", "--run", run_id, "--github-output", str(github_output),
        "--artifact-dir", str(tmp_path / "a"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"### pikaci run `{run_id}`" in done.stdout
    assert outputs_of(github_output)["run_status"] == "failed"
    assert (tmp_path / "a" / "jobs" / "broken" / "host.log").is_file()
    none = project.doit("summary", "--target", "nope")
    assert none.returncode != 0 and "no run of target `nope`" in none.stdout + none.stderr
    listing = project.doit("list").stdout.splitlines()
    assert any(line.startswith("summary ") for line in listing)
    rerun = project.doit("run", "--continue")  # plain doit: lanes only, no summary output
    assert "### pikaci run" not in rerun.stdout
