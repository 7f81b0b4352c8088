"""A run as a CI step reports it: Markdown, `key=value` outputs, an artifact directory, and
the host logs of failed jobs (`pikaci summary`, `doit summary`).

The shapes follow the summary script of the system pikaci replaces: a `### pikaci run` block,
`run_id=`, `run_status=`, `run_duration_seconds=`, `artifact_name=pikaci-run-<id>` for
`$GITHUB_OUTPUT`, and `run.json`, `plan.json`, `prepared-outputs.json`,
`jobs/<id>/host.log`, `jobs/<id>/guest.log` in the artifact directory. Everything read from the
run is untrusted: files are opened below the state root without following links, job ids that
are not safe ids are never used as paths, and text from records is escaped for Markdown.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, List, Mapping, Optional, TextIO, Tuple

from pikaci.confined import open_below
from pikaci.ids import is_safe_id
from pikaci.model import (
    RUN_FAILED,
    RUN_PASSED,
    RUN_RUNNING,
    RUN_SKIPPED,
    JobRecord,
    RecordError,
    RunRecord,
)
from pikaci.options import Option
from pikaci.store import (
    PREPARED_OUTPUTS_FILE,
    StateRoot,
    StoreError,
    check_run_id,
    job_log_paths,
    list_runs,
    load_run_record,
)
from pikaci.terminal import ControlFilter
from pikaci.timestamps import duration_ms

RUN = Option("run_id", "run", str, "", "the run to summarise (default: the newest one)", "RUN_ID")
TARGET = Option(
    "target", "target", str, "", "without a run id: the newest run of this target", "TARGET"
)
ARTIFACT_DIR = Option(
    "artifact_dir", "artifact-dir", str, "", "copy the run's records and job logs here", "DIR"
)
GITHUB_OUTPUT = Option(
    "github_output",
    "github-output",
    str,
    "",
    "append key=value outputs here (default: $GITHUB_OUTPUT)",
    "FILE",
)
STEP_SUMMARY = Option(
    "step_summary",
    "step-summary",
    str,
    "",
    "append the Markdown here instead of stdout (default: $GITHUB_STEP_SUMMARY)",
    "FILE",
)
ALLOW_MISSING = Option(
    "allow_missing", "allow-missing", bool, False, "no run to summarise is not an error"
)
OPTIONS = (TARGET, ARTIFACT_DIR, GITHUB_OUTPUT, STEP_SUMMARY, ALLOW_MISSING)

STATUS_CORRUPT = "corrupt"  # run_status of a run whose record cannot be read
RUN_FILES = ("run.json", "plan.json", PREPARED_OUTPUTS_FILE)
# the end of each failed job's host log printed into the CI log; the artifact has the rest
FAILED_LOG_TAIL = 256 * 1024
MESSAGE_LIMIT = 300
_RESULT_WORDS = {
    RUN_PASSED: "passed",
    RUN_FAILED: "**failed**",
    RUN_SKIPPED: "skipped",
    RUN_RUNNING: "running (not finished)",
    STATUS_CORRUPT: "**corrupt record**",
}


class SummaryError(Exception):
    """No run to summarise (and --allow-missing not given), or a bad argument."""


@dataclass
class Summary:
    run_id: str
    status: str
    markdown: str
    outputs: List[str]
    failed_jobs: List[str] = field(default_factory=list)


def markdown_text(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Record text for one Markdown table cell: one line, no HTML, no column breaks."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    for raw, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|")):
        flat = flat.replace(raw, escaped)
    return flat.replace("`", "'")


def seconds_between(started: Optional[str], finished: Optional[str]) -> Optional[float]:
    if not started or not finished:
        return None
    try:
        return duration_ms(started, finished) / 1000
    except ValueError:
        return None


def _shown_seconds(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def find_run_id(state: StateRoot, target: Optional[str], warnings: TextIO) -> Optional[str]:
    """The newest run (of `target` when given); unreadable runs are reported and skipped."""
    listing = list_runs(state)
    for problem in listing.problems:
        warnings.write(f"warning: skipping unreadable run: {problem}\n")
    for run in listing.runs:
        if target is None or run.target_id == target:
            return run.run_id
    return None


def output(key: str, value: str) -> str:
    """One `key=value` line; a record's text must not add lines (outputs) of its own."""
    return f"{key}={' '.join(value.splitlines())}"


def summarise(state: StateRoot, run_id: str) -> Summary:
    check_run_id(run_id)
    outputs = [output("run_id", run_id), output("artifact_name", f"pikaci-run-{run_id}")]
    try:
        run = load_run_record(state, run_id)
    except RecordError as exc:
        text = (
            f"### pikaci run `{run_id}`\n\n"
            f"The run record cannot be read: {markdown_text(str(exc))}\n"
        )
        outputs.append(output("run_status", STATUS_CORRUPT))
        return Summary(run_id, STATUS_CORRUPT, text, outputs)
    seconds = seconds_between(run.created_at, run.finished_at)
    outputs += [
        output("run_status", run.status),
        output("run_duration_seconds", "" if seconds is None else str(round(seconds))),
        output("target_id", run.target_id or ""),
    ]
    target = f"`{markdown_text(run.target_id)}`" if run.target_id else "-"
    if run.target_description:
        target += f" ({markdown_text(run.target_description)})"
    rows = [
        ("target", target),
        ("result", _RESULT_WORDS.get(run.status, markdown_text(run.status))),
        ("duration", _shown_seconds(seconds)),
    ]
    if run.rerun_of:
        rows.append(("rerun of", f"`{markdown_text(run.rerun_of)}`"))
    if run.message:
        rows.append(("message", markdown_text(run.message)))
    if run.prepared_outputs_path:
        rows.append(("prepared outputs", f"`{markdown_text(run.prepared_outputs_path)}`"))
    if run.changed_files:
        rows.append(("changed files", str(len(run.changed_files))))
    lines = [f"### pikaci run `{run.run_id}`", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    failed: List[str] = []
    if run.jobs:
        lines += ["", "| job | status | duration | message |", "|---|---|---|---|"]
        for job in run.jobs:
            lines.append(_job_row(job))
            if job.status == RUN_FAILED:
                failed.append(job.id)
            if is_safe_id(job.id):
                outputs.append(output(f"job_{job.id}_status", job.status))
    outputs.append(output("failed_jobs", ",".join(j for j in failed if is_safe_id(j))))
    return Summary(run.run_id, run.status, "\n".join(lines) + "\n", outputs, failed)


def _job_row(job: JobRecord) -> str:
    seconds = seconds_between(job.started_at, job.finished_at)
    note = job.message or ""
    if job.reused_from_run:
        note = f"reused from {job.reused_from_run}" + (f": {note}" if note else "")
    return (
        f"| `{markdown_text(job.id)}` | {markdown_text(job.status)} | {_shown_seconds(seconds)} "
        f"| {markdown_text(note)} |"
    )


def append_text(path: Path, text: str) -> None:
    """Append to a file the CI runner reads after the step (it may already hold other steps')."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(text)


def copy_artifacts(state: StateRoot, run_id: str, dest: Path, warnings: TextIO) -> List[str]:
    """The run's records and each job's logs into `dest`; what was copied, relative to it."""
    run_dir = state.run_dir(run_id)
    pairs = [(run_dir / name, Path(name)) for name in RUN_FILES]
    run = _readable_run(state, run_id)
    if run is not None:
        pairs += _job_logs(state, run, warnings)
    copied = []
    for source, relative in pairs:
        try:
            handle = open_below(state.root, source)
        except FileNotFoundError:
            continue
        except OSError as exc:
            warnings.write(f"warning: not copying {source}: {exc.strerror or exc}\n")
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with handle, open(target, "wb") as out:
            shutil.copyfileobj(handle, out, 1 << 20)
        copied.append(str(relative))
    return copied


def _job_logs(state: StateRoot, run: RunRecord, warnings: TextIO) -> List[Tuple[Path, Path]]:
    """(log, its place in the artifact) for each job whose id is safe as a directory name."""
    pairs = []
    for job in run.jobs:
        if not is_safe_id(job.id):
            warnings.write(f"warning: not copying the logs of job {job.id!r}: not a safe id\n")
            continue
        host, guest = job_log_paths(state, run, job)
        pairs.append((host, Path("jobs", job.id, "host.log")))
        pairs.append((guest, Path("jobs", job.id, "guest.log")))
    return pairs


def _readable_run(state: StateRoot, run_id: str) -> Optional[RunRecord]:
    try:
        return load_run_record(state, run_id)
    except (RecordError, StoreError):
        return None


def print_failed_logs(
    state: StateRoot, run_id: str, failed: List[str], out: TextIO, tail: int = FAILED_LOG_TAIL
) -> None:
    """Each failed job's host log (its last `tail` bytes) under the upstream CI banner; on a
    terminal only the colour sequences of the lane's output pass."""
    run = _readable_run(state, run_id)
    if run is None:
        return
    for job in run.jobs:
        if job.id not in failed:
            continue
        host, _ = job_log_paths(state, run, job)
        out.write(f"===== pikaci host log: run={run_id} job={job.id} =====\n")
        try:
            handle = open_below(state.root, host)
        except OSError as exc:
            out.write(f"(no readable host log: {exc.strerror or exc})\n")
            continue
        with handle:
            data = _tail_bytes(handle, tail)
        if out.isatty():
            data = ControlFilter().feed(data)
        out.write(data.decode("utf-8", "replace"))
        out.flush()


def _tail_bytes(handle: BinaryIO, tail: int) -> bytes:
    size = os.fstat(handle.fileno()).st_size
    start = max(0, size - tail)
    handle.seek(start)
    data = handle.read(tail)
    note = f"({start} bytes before this are in the artifact's host.log)\n" if start else ""

    return note.encode() + data + (b"" if data.endswith(b"\n") or not data else b"\n")


def summary_command(
    state: StateRoot,
    run_id: str,
    target: str,
    artifact_dir: str,
    github_output: str,
    step_summary: str,
    allow_missing: bool,
    environ: Mapping[str, str],
    out: TextIO,
    err: TextIO,
) -> int:
    """What `pikaci summary` and `doit summary` do. 0 when the run was summarised, whatever
    its status (the run's own step reports a failure); 1 for a corrupt record or no run."""
    chosen = run_id or find_run_id(state, target or None, err)
    if not chosen:
        where = f"of target `{target}` " if target else ""
        if not allow_missing:
            raise SummaryError(f"no run {where}under {state.runs_dir}")
        err.write(f"pikaci summary: no run {where}under {state.runs_dir}; nothing to report\n")
        return 0
    summary = summarise(state, chosen)
    summary_file = step_summary or environ.get("GITHUB_STEP_SUMMARY", "")
    if summary_file:
        append_text(Path(summary_file), summary.markdown + "\n")
    else:
        out.write(summary.markdown)
        out.flush()
    outputs_file = github_output or environ.get("GITHUB_OUTPUT", "")
    if outputs_file:
        append_text(Path(outputs_file), "".join(line + "\n" for line in summary.outputs))
    if artifact_dir:
        copied = copy_artifacts(state, summary.run_id, Path(artifact_dir), err)
        err.write(f"pikaci summary: copied {len(copied)} file(s) to {artifact_dir}\n")
    print_failed_logs(state, summary.run_id, summary.failed_jobs, err)
    return 1 if summary.status == STATUS_CORRUPT else 0
