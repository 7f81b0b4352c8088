"""Read-only commands over the state root: list, status, logs, prepared-outputs, gc.

Output shapes follow the commands of the system pikaci replaces, so scripts that parse them keep
working. Each `*_command` returns the process exit code and writes to the given streams;
`register` adds the subcommands, whose handlers pass them stdout and stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import BinaryIO, List, Optional, TextIO

from pikaci.confined import open_below
from pikaci.model import RUN_RUNNING, RecordError, dumps_pretty
from pikaci.retention import gc_runs
from pikaci.settings import settings_from_environment
from pikaci.store import (
    StateRoot,
    StoreError,
    job_log_paths,
    list_runs,
    load_logs_metadata,
    load_prepared_outputs,
    load_run_record,
    run_is_active,
)
from pikaci.terminal import ControlFilter

_OPTIONAL_STATUS_FIELDS = (
    ("plan", "plan_path"),
    ("prepared_outputs", "prepared_outputs_path"),
    ("prepared_output_consumer", "prepared_output_consumer"),
    ("prepared_output_mode", "prepared_output_mode"),
    ("prepared_output_invocation_mode", "prepared_output_invocation_mode"),
    (
        "prepared_output_invocation_launcher_program",
        "prepared_output_invocation_wrapper_program",
    ),
    ("prepared_output_launcher_transport_mode", "prepared_output_launcher_transport_mode"),
    ("prepared_output_launcher_transport_program", "prepared_output_launcher_transport_program"),
    ("prepared_output_launcher_transport_host", "prepared_output_launcher_transport_host"),
    (
        "prepared_output_launcher_transport_remote_launcher_program",
        "prepared_output_launcher_transport_remote_launcher_program",
    ),
    (
        "prepared_output_launcher_transport_remote_helper_program",
        "prepared_output_launcher_transport_remote_helper_program",
    ),
    (
        "prepared_output_launcher_transport_remote_work_dir",
        "prepared_output_launcher_transport_remote_work_dir",
    ),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("list", help="one line per run, newest first").set_defaults(func=_list)
    status = sub.add_parser("status", help="a run's record")
    status.add_argument("run_id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)
    logs = sub.add_parser("logs", help="a job's host and guest logs")
    logs.add_argument("run_id")
    logs.add_argument("--job")
    logs.add_argument("--kind", choices=("host", "guest", "both"), default="both")
    logs.add_argument("--metadata-json", action="store_true")
    logs.set_defaults(func=_logs)
    prepared = sub.add_parser("prepared-outputs", help="a run's prepared outputs")
    prepared.add_argument("run_id")
    prepared.add_argument("--json", action="store_true")
    prepared.set_defaults(func=_prepared_outputs)
    gc = sub.add_parser("gc", help="delete old runs and unreferenced snapshots")
    gc.add_argument("--keep-runs", type=int, default=10)
    gc.set_defaults(func=_gc)


def state_root(args: argparse.Namespace) -> StateRoot:
    """--state-root > $PIKACI_STATE_ROOT > ./.pikaci, for the commands that only read it."""
    return StateRoot(settings_from_environment(Path.cwd(), args.state_root, "human").state_root)


def _list(args: argparse.Namespace) -> int:
    return list_command(state_root(args), sys.stdout, sys.stderr)


def _status(args: argparse.Namespace) -> int:
    return status_command(state_root(args), args.run_id, args.json, sys.stdout)


def _logs(args: argparse.Namespace) -> int:
    state = state_root(args)
    return logs_command(state, args.run_id, args.job, args.kind, args.metadata_json, sys.stdout)


def _prepared_outputs(args: argparse.Namespace) -> int:
    return prepared_outputs_command(state_root(args), args.run_id, args.json, sys.stdout)


def _gc(args: argparse.Namespace) -> int:
    return gc_command(state_root(args), args.keep_runs, sys.stdout)


CHUNK = 1 << 20


def list_command(state: StateRoot, out: TextIO, err: TextIO) -> int:
    listing = list_runs(state)
    for problem in listing.problems:
        err.write(f"warning: skipping unreadable run: {problem}\n")
    for run in listing.runs:
        target = run.target_id or (run.jobs[0].id if run.jobs else "-")
        out.write(f"{run.run_id}\t{run.status}\t{target}\t{run.created_at}\n")
    return 0


def status_command(state: StateRoot, run_id: str, as_json: bool, out: TextIO) -> int:
    run = load_run_record(state, run_id)
    if as_json:
        out.write(dumps_pretty(run.to_dict()).decode())
        return 0
    out.write(f"{run.run_id} {run.target_id or '-'} {run.status}\n")
    if run.status == RUN_RUNNING and not run_is_active(state.runs_dir / run.run_id):
        out.write("note=orchestrator is gone; this run was interrupted before it finished\n")
    for label, attribute in _OPTIONAL_STATUS_FIELDS:
        value = getattr(run, attribute)
        if value:
            out.write(f"{label}={value}\n")
    if run.message:
        out.write(f"{run.message}\n")
    out.write(f"changed_files={len(run.changed_files)}\n")
    for job in run.jobs:
        out.write(f"{job.id} {job.status}\n")
    return 0


def logs_command(
    state: StateRoot,
    run_id: str,
    job_id: Optional[str],
    kind: str,
    metadata_json: bool,
    out: TextIO,
) -> int:
    run = load_run_record(state, run_id)
    if metadata_json:
        metadata = load_logs_metadata(state, run)
        if job_id is not None:
            metadata.jobs = [job for job in metadata.jobs if job.id == job_id]
            if not metadata.jobs:
                raise StoreError(f"run `{run_id}` has no job `{job_id}`")
        out.write(dumps_pretty(metadata.to_dict()).decode())
        return 0
    if not run.jobs:
        raise StoreError(f"run `{run_id}` has no jobs")
    job = run.jobs[0] if job_id is None else run.job(job_id)
    if job is None:
        known = ", ".join(j.id for j in run.jobs)
        raise StoreError(f"run `{run_id}` has no job `{job_id}` (jobs: {known})")
    host, guest = job_log_paths(state, run, job)
    sections = [("host", host), ("guest", guest)]
    for name, path in sections:
        if kind in (name, "both"):
            out.write(f"== {name} ==\n")
            out.flush()
            _copy_file(state, path, out)
    return 0


def _copy_file(state: StateRoot, path: Path, out: TextIO) -> None:
    """A log of the run bundle, opened without following links (a link, FIFO or device in its
    place is refused); on a terminal, only colour sequences of the lane's output pass."""
    binary: Optional[BinaryIO] = getattr(out, "buffer", None)
    try:
        handle = open_below(state.root, path)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    filtered = ControlFilter() if out.isatty() else None
    with handle:
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            if filtered is not None:
                chunk = filtered.feed(chunk)
            _write(out, binary, chunk)
        if filtered is not None:
            _write(out, binary, filtered.close())
    if binary is not None:
        binary.flush()


def _write(out: TextIO, binary: Optional[BinaryIO], data: bytes) -> None:
    if binary is not None:
        binary.write(data)
    else:
        out.write(data.decode("utf-8", "replace"))


def prepared_outputs_command(state: StateRoot, run_id: str, as_json: bool, out: TextIO) -> int:
    run = load_run_record(state, run_id)
    try:
        record = load_prepared_outputs(state, run)
    except RecordError as exc:
        raise StoreError(f"prepared outputs of run `{run_id}` are unreadable: {exc}") from None
    if record is None:
        raise StoreError(f"prepared outputs not found for run `{run_id}`")
    if as_json:
        out.write(dumps_pretty(record.to_dict()).decode())
        return 0
    out.write(f"run_id={run.run_id}\nschema_version={record.schema_version}\n")
    out.write(f"outputs={len(record.outputs)}\n")
    for output in record.outputs:
        payload = output.payload or {}
        consumer = output.consumer
        row: List[str] = [
            output.node_id,
            output.output_name,
            output.installable,
            consumer,
            output.realized_path,
            str(payload.get("kind") or "-"),
            str(len(payload.get("entrypoints") or [])),
        ]
        out.write("\t".join(row) + "\n")
    return 0


def gc_command(state: StateRoot, keep_runs: int, out: TextIO) -> int:
    report = gc_runs(state, keep_runs)
    out.write(f"removed_runs={len(report.removed_runs)}\n")
    for run_id in report.removed_runs:
        out.write(f"{run_id}\n")
    if report.kept_active:
        out.write(f"kept_active_runs={len(report.kept_active)}\n")
        for run_id in report.kept_active:
            out.write(f"{run_id}\n")
    out.write(f"removed_snapshots={len(report.removed_snapshots)}\n")
    for problem in report.skipped:
        sys.stderr.write(f"pikaci: gc: skipped {problem}\n")
    return 0
