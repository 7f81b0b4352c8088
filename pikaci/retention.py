"""Retention of the state root (`pikaci gc`): all but the newest runs, and the snapshots no
remaining run names.

A run whose orchestrator is alive is never removed, nor is anything in `runs/` that is not a
run directory (a link, a name that is not a run id: reported, never followed or counted), and a
record that does not decode still keeps the snapshots it names.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Set

from pikaci.model import RecordError
from pikaci.store import (
    RUN_FILE,
    SNAPSHOT_NAME,
    STAGING_PREFIX,
    StateRoot,
    StoreError,
    list_runs,
    not_a_run,
    read_record,
    run_is_active,
)

SNAPSHOT_TEMP_PREFIX = ".tmp-"  # a snapshot being made, renamed into place when complete


@dataclass
class GcReport:
    removed_runs: List[str] = field(default_factory=list)
    kept_active: List[str] = field(default_factory=list)
    removed_snapshots: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def gc_runs(state: StateRoot, keep_runs: int) -> GcReport:
    """Delete all but the `keep_runs` newest run directories (ids sort chronologically).

    A run whose orchestrator is still alive is never removed. Snapshots that no remaining run
    references are removed too; doit's saved state may still name one, and the snapshot task
    then rebuilds it on the next run (its up-to-date check looks for the directory).
    """
    if keep_runs < 0:
        raise StoreError("--keep-runs must be zero or positive")
    report = GcReport()
    try:
        entries = sorted(os.scandir(state.runs_dir), key=lambda entry: entry.name)
    except FileNotFoundError:
        entries = []
    names = []
    for entry in entries:
        problem = None if entry.name.startswith(".") else not_a_run(entry)
        if problem is not None:
            report.skipped.append(f"runs/{entry.name}: {problem}")  # never removed, never counted
        elif not entry.name.startswith("."):
            names.append(entry.name)
    remove_abandoned_staging(state)
    doomed = names[: max(0, len(names) - keep_runs)]
    for name in doomed:
        run_dir = state.runs_dir / name
        if run_is_active(run_dir):
            report.kept_active.append(name)
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        report.removed_runs.append(name)
    remove_abandoned_temps(state.snapshots_dir, SNAPSHOT_TEMP_PREFIX)
    report.removed_snapshots = _gc_snapshots(state)
    return report


def remove_abandoned_staging(state: StateRoot) -> None:
    """Half-created run directories of orchestrators that died before the rename."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(state.runs_dir):
            if entry.name.startswith(STAGING_PREFIX) and not run_is_active(Path(entry.path)):
                shutil.rmtree(entry.path, ignore_errors=True)


def _gc_snapshots(state: StateRoot) -> List[str]:
    # compared by directory name: records may spell the state root through a symlink
    referenced: Set[str] = set()
    for run in list_runs(state).runs:
        paths = [run.snapshot_dir, *(job.snapshot_dir for job in run.jobs)]
        referenced.update(Path(path).name for path in paths if path)
    # an unreadable record still keeps the snapshots it names: nothing it needs is deleted
    referenced.update(_salvaged_snapshots(state))
    try:
        entries = [e for e in os.scandir(state.snapshots_dir) if e.is_dir()]
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        # only content-addressed snapshots; `.tmp-*` ones are being published right now
        if not SNAPSHOT_NAME.fullmatch(entry.name) or entry.name in referenced:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return sorted(removed)


def _salvaged_snapshots(state: StateRoot) -> Set[str]:
    """Snapshot names that records which do not decode still mention (`snapshot_dir` strings
    at the top level and in `jobs`)."""
    names: Set[str] = set()
    try:
        entries = [e for e in os.scandir(state.runs_dir) if not_a_run(e) is None]
    except FileNotFoundError:
        return names
    for entry in entries:
        try:
            data = read_record(state, Path(entry.path) / RUN_FILE)
        except (FileNotFoundError, RecordError):
            continue
        jobs = data.get("jobs")
        candidates = [data, *(jobs if isinstance(jobs, list) else [])]
        for item in candidates:
            value = item.get("snapshot_dir") if isinstance(item, dict) else None
            if isinstance(value, str) and value:
                names.add(Path(value).name)
    return names


def remove_abandoned_temps(store: Path, prefix: str, stale_secs: float = 60.0) -> List[str]:
    """Remove `<prefix><pid>-...` temp directories whose makers died (SIGKILL) before they
    renamed them into place: not flock-ed (a maker holds its directory's lock while it fills
    it), and of a process that is gone or older than `stale_secs` (the pid was reused)."""
    removed: List[str] = []
    try:
        entries = [e for e in os.scandir(store) if e.name.startswith(prefix)]
    except FileNotFoundError:
        return removed
    for entry in entries:
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            age = time.time() - os.fstat(fd).st_mtime
            if not _process_alive(pid_text) or age > stale_secs:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
        except OSError:
            pass  # locked: its maker is still at work
        finally:
            os.close(fd)
    return removed


def _process_alive(pid_text: str) -> bool:
    if not pid_text.isdigit():
        return True  # not one of ours by name: only its age can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
