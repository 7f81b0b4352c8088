"""Remote GC on a builder: old runs, unused snapshots, temp dirs of killed publishers.

GC (`remote_gc`, one round trip) removes `runs/<id>` beyond the newest `keep_runs` (run ids sort
chronologically) unless leased, then `snapshots/<id>` that no remaining run uses, nobody leases
and that was not used within `keep_snapshots_days`; leftover temp dirs of killed publishers go
too. It reports the sizes (`du -sk`) of what it removed. It holds `locks/gc.lock` exclusively
for its whole pass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import List, TextIO

from pikaci.builder.connect import connect
from pikaci.builder.layout import GC_LOCK_WAIT_SECS, Log, RemoteError, RemoteLayout, quote
from pikaci.builder.transport import Builder, RemoteCommandError, Transport, TransportError
from pikaci.model import dumps_pretty
from pikaci.options import Option, non_negative

# -- garbage collection -----------------------------------------------------------------------


@dataclass
class GcResult:
    removed_runs: List[str] = field(default_factory=list)
    removed_snapshots: List[str] = field(default_factory=list)
    kept_in_use: List[str] = field(default_factory=list)  # "runs/<id>", "snapshots/<id>"
    freed_bytes: int = 0
    removed_temps: List[str] = field(default_factory=list)
    kept_snapshots: List[str] = field(default_factory=list)  # referenced or recently used


def remote_gc(
    transport: Transport,
    layout: RemoteLayout,
    keep_runs: int,
    keep_snapshots_days: float,
    log: Log,
) -> GcResult:
    """Remove old runs and unused snapshots from the builder in one round trip."""
    if keep_runs < 0 or keep_snapshots_days < 0:
        raise RemoteError("keep_runs and keep_snapshots_days must be zero or positive")
    minutes = math.ceil(keep_snapshots_days * 24 * 60)
    result = transport.run("remote gc", _gc_script(layout, keep_runs, minutes))
    gc = _parse_gc(result.text)
    log(
        f"remote gc on {transport.builder.host}: removed {len(gc.removed_runs)} run(s), "
        f"{len(gc.removed_snapshots)} snapshot(s), {len(gc.removed_temps)} temp dir(s), "
        f"freed {gc.freed_bytes} bytes; in use: {', '.join(gc.kept_in_use) or 'nothing'}"
    )
    return gc


_GC_BODY = r"""
[ -d "$work" ] || exit 0
cd "$work"
mkdir -p locks
exec 8>locks/gc.lock
if ! flock -w "$wait" -x 8; then echo "gc: locks/gc.lock still busy after ${wait}s"; exit 75; fi
kb() { du -sk "$1" 2>/dev/null | cut -f1; }
unused() { flock -n -x "$1" true; }
set -- $(ls -1 runs 2>/dev/null | grep -E '^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$' | sort)
drop=$(($# - keep))
for r in "$@"; do
  [ "$drop" -gt 0 ] || break
  drop=$((drop - 1))
  if unused "locks/run-$r.lock"; then
    k=$(kb "runs/$r"); rm -rf "runs/$r"; rm -f "locks/run-$r.lock"
    echo "removed run $r ${k:-0}"
  else
    echo "in-use run $r"
  fi
done
for s in $(ls -1 snapshots 2>/dev/null | grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*$'); do
  [ -d "snapshots/$s" ] || continue
  if ! unused "locks/snapshot-$s.lock"; then echo "in-use snapshot $s"; continue; fi
  for t in "snapshots/$s"/.tmp-*; do
    [ -e "$t" ] || continue
    k=$(kb "$t"); rm -rf "$t"; echo "removed temp $s/${t##*/} ${k:-0}"
  done
  set -- runs/*/uses/"$s"
  if [ -e "$1" ]; then echo "kept snapshot $s referenced"; continue; fi
  if [ "$minutes" -gt 0 ] && [ -n "$(find "snapshots/$s" -maxdepth 0 -mmin -"$minutes")" ]; then
    echo "kept snapshot $s recent"; continue
  fi
  k=$(kb "snapshots/$s"); rm -rf "snapshots/$s"; rm -f "locks/snapshot-$s.lock"
  echo "removed snapshot $s ${k:-0}"
done
"""


def _gc_script(layout: RemoteLayout, keep_runs: int, minutes: int) -> str:
    settings = (
        f"work={quote(layout.work_dir)} keep={keep_runs} minutes={minutes} wait={GC_LOCK_WAIT_SECS}"
    )
    return "set -eu\nexport LC_ALL=C\n" + settings + _GC_BODY


def _parse_gc(output: str) -> GcResult:
    gc = GcResult()
    for line in output.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "removed" and words[3].isdigit():
            gc.freed_bytes += int(words[3]) * 1024
            target = {"run": gc.removed_runs, "snapshot": gc.removed_snapshots}
            target.get(words[1], gc.removed_temps).append(words[2])
        elif len(words) == 3 and words[0] == "in-use":
            gc.kept_in_use.append(f"{words[1]}s/{words[2]}")
        elif len(words) == 4 and words[:2] == ["kept", "snapshot"]:
            gc.kept_snapshots.append(words[2])
    return gc


DEFAULT_KEEP_RUNS = 20
DEFAULT_KEEP_SNAPSHOTS_DAYS = 2.0
REMOTE_GC_ERRORS = (TransportError, RemoteError, RemoteCommandError)

KEEP_RUNS = Option(
    "keep_runs",
    "keep-runs",
    int,
    DEFAULT_KEEP_RUNS,
    f"keep the newest N runs on the builder (default {DEFAULT_KEEP_RUNS})",
    metavar="N",
    expects="zero or a positive whole number",
    valid=non_negative,
)
KEEP_SNAPSHOTS_DAYS = Option(
    "keep_snapshots_days",
    "keep-snapshots-days",
    float,
    DEFAULT_KEEP_SNAPSHOTS_DAYS,
    "keep unreferenced snapshots used within the last D days "
    f"(default {DEFAULT_KEEP_SNAPSHOTS_DAYS:g}; 0 removes them all)",
    metavar="D",
    expects="zero or a positive number of days",
    valid=non_negative,
)


def check_keep_runs(value: int, flag: str = "--keep-runs") -> int:
    if value < 0:
        raise ValueError(f"{flag}: expected zero or a positive number of runs, got {value}")
    return value


def check_keep_snapshots_days(value: float, flag: str = "--keep-snapshots-days") -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{flag}: expected zero or a positive number of days, got {value:g}")
    return value


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
        out.write(dumps_pretty(asdict(result)).decode())
        return 0
    for line in report_lines(result, builder):
        out.write(line + "\n")
    return 0
