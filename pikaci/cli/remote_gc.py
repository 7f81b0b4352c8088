"""Remote GC on the configured builder: `pikaci gc-remote` and the `gc_remote` doit task.

Both read the builder from the environment (`PIKACI_BUILDER`, ...) and call `remote.remote_gc`
once. Every function returns the process exit code or raises one of `REMOTE_GC_ERRORS`, whose
messages are one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import List, TextIO

from pikaci.model import dumps_pretty
from pikaci.remote import GcResult, RemoteError, RemoteLayout, remote_gc
from pikaci.runtimes.remote_common import connect
from pikaci.transport import Builder, RemoteCommandError, TransportError

DEFAULT_KEEP_RUNS = 20
DEFAULT_KEEP_SNAPSHOTS_DAYS = 2.0
REMOTE_GC_ERRORS = (TransportError, RemoteError, RemoteCommandError)

KEEP_RUNS_HELP = f"keep the newest N runs on the builder (default {DEFAULT_KEEP_RUNS})"
KEEP_SNAPSHOTS_DAYS_HELP = (
    "keep unreferenced snapshots used within the last D days "
    f"(default {DEFAULT_KEEP_SNAPSHOTS_DAYS:g}; 0 removes them all)"
)


def check_keep_runs(value: int, flag: str = "--keep-runs") -> int:
    if value < 0:
        raise ValueError(f"{flag}: expected zero or a positive number of runs, got {value}")
    return value


def check_keep_snapshots_days(value: float, flag: str = "--keep-snapshots-days") -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{flag}: expected zero or a positive number of days, got {value:g}")
    return value


def keep_runs_arg(text: str) -> int:
    """argparse type: a usage error (exit 2) naming the flag instead of a traceback."""
    try:
        return check_keep_runs(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected zero or a positive whole number, got {text!r}"
        ) from None


def keep_snapshots_days_arg(text: str) -> float:
    try:
        return check_keep_snapshots_days(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected zero or a positive number of days, got {text!r}"
        ) from None


def collect_garbage(builder: Builder, keep_runs: int, keep_snapshots_days: float) -> GcResult:
    check_keep_runs(keep_runs)
    check_keep_snapshots_days(keep_snapshots_days)
    layout = RemoteLayout.for_builder(builder)
    transport = connect(builder, _discard)  # never closed: other processes share the master
    return remote_gc(transport, layout, keep_runs, keep_snapshots_days, _discard)


def _discard(line: str) -> None:
    """The transport logs every script it runs; the report below is what people read."""


def report_lines(result: GcResult, builder: Builder) -> List[str]:
    lines = [f"removed run {run_id}" for run_id in result.removed_runs]
    lines += [f"removed snapshot {tree_id}" for tree_id in result.removed_snapshots]
    lines += [f"removed temp {temp}" for temp in result.removed_temps]
    lines += [f"kept in use: {path}" for path in result.kept_in_use]
    lines += [f"kept snapshot {tree_id}" for tree_id in result.kept_snapshots]
    lines.append(
        f"remote gc on {builder.host} ({builder.remote_work_dir}): "
        f"removed {len(result.removed_runs)} run(s), {len(result.removed_snapshots)} "
        f"snapshot(s), {len(result.removed_temps)} temp dir(s); "
        f"{len(result.kept_in_use)} kept in use; "
        f"freed {human_bytes(result.freed_bytes)} ({result.freed_bytes} bytes)"
    )
    return lines


def human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def gc_remote_command(
    builder: Builder, keep_runs: int, keep_snapshots_days: float, as_json: bool, out: TextIO
) -> int:
    result = collect_garbage(builder, keep_runs, keep_snapshots_days)
    if as_json:
        out.write(dumps_pretty(dataclasses.asdict(result)).decode())
        return 0
    for line in report_lines(result, builder):
        out.write(line + "\n")
    return 0
