"""Fault injection report: `doit run` killed at moments spread over whole runs, per case.

    .venv/bin/python bench/fault_injection.py                       # 30 trials per signal
    .venv/bin/python bench/fault_injection.py --trials 5 --cases local_sandbox
    .venv/bin/python bench/fault_injection.py --output /tmp/faults.json --check

Each trial forgets doit's state, starts `doit run target:main`, sends SIGKILL or SIGTERM after
a delay spread evenly (with jitter) over one run's duration, and checks that every record reads,
the run is marked, nothing is left behind (processes, the builder's processes, temporary
directories) and the next run passes; see tests/fixtures/faults.py. Cases:

- local_sandbox: a staged target (nix-built payloads) whose lane runs in the local sandbox:
  kills land in the snapshot, the payload builds, the lane and its collection;
- remote_sandbox: two `remote_ssh` + `bubblewrap` lanes on a loopback sshd builder (root
  only): kills land in the snapshot, its upload, the lanes and the pulls.

Results go to bench/results/fault_injection.json (or --output): per case and signal the trial
count, the failures and where the kills landed, plus every failing trial. With --check the
script exits 1 when any trial failed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

from noop_rerun import machine, positive_int, source_revision

from pikaci.store import write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # the harness and the project helpers live in tests/

from tests.fixtures.faults import Harness, Trial, processes_mentioning, run_trials  # noqa: E402
from tests.fixtures.projects import LaneSpec, new_repository, render_dodo  # noqa: E402
from tests.fixtures.sshd import USER, running_sshd  # noqa: E402
from tests.fixtures.staged import BUILD_ROOT, DEPS_ROOT, new_staged_project  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "fault_injection.json"
CASES = ("local_sandbox", "remote_sandbox")
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}


@contextlib.contextmanager
def local_sandbox(scratch: Path) -> Iterator[Harness]:
    project = new_staged_project(
        scratch / "repo",
        scratch / "state",
        f"faults{os.getpid()}",
        {"run-check": f"cat {DEPS_ROOT}/share/inputs/hello.txt; sleep 1\n"},
        {
            "main": [
                LaneSpec(
                    "check",
                    f"{BUILD_ROOT}/bin/run-check",
                    runtime="bubblewrap",
                )
            ]
        },
    )
    yield Harness("local_sandbox", project)


@contextlib.contextmanager
def remote_sandbox(scratch: Path) -> Iterator[Harness]:
    if os.geteuid() != 0:
        raise SystemExit("remote_sandbox needs root: the builder is a loopback sshd user")
    with running_sshd() as server:
        work = str(server.work_dir())
        env = {
            "PIKACI_BUILDER": server.host,
            "PIKACI_BUILDER_SSH_CONFIG": str(server.ssh_config),
            "PIKACI_BUILDER_WORK_DIR": work,
        }
        lanes = [
            LaneSpec(
                "a", "echo on the builder; sleep 1", placement="remote_ssh", runtime="bubblewrap"
            ),
            LaneSpec("b", "true", placement="remote_ssh", runtime="bubblewrap"),
        ]
        project = new_repository(
            scratch / "repo", scratch / "state", {"dodo.py": render_dodo(lanes)}
        )
        yield Harness(
            "remote_sandbox",
            project,
            {**project.env, **env},
            leftovers=lambda: processes_mentioning(work, user=USER),
            remote_root=Path(work),
        )


def summarize(trials: List[Trial]) -> List[Dict[str, Any]]:
    rows = []
    keys = sorted({(t.case, t.signal) for t in trials})
    for case, name in keys:
        mine = [t for t in trials if t.case == case and t.signal == name]
        rows.append(
            {
                "case": case,
                "signal": name,
                "trials": len(mine),
                "failures": sum(1 for t in mine if t.problems),
                "phases": dict(collections.Counter(t.phase for t in mine)),
            }
        )
    return rows


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials", type=positive_int, default=30, help="trials per case and signal"
    )
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="exit 1 when any trial failed")
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"--cases: unknown case {unknown[0]!r} (known: {', '.join(CASES)})")
    builders = {"local_sandbox": local_sandbox, "remote_sandbox": remote_sandbox}
    trials: List[Trial] = []
    durations: Dict[str, float] = {}
    started = time.monotonic()
    for index, case in enumerate(cases):
        with contextlib.ExitStack() as stack:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="pikaci-faults-"))
            harness = stack.enter_context(builders[case](Path(scratch)))
            durations[case] = round(harness.duration(), 3)
            print(f"{case}: one run takes {durations[case]:.2f}s", flush=True)
            trials += run_trials(
                harness,
                args.trials,
                seed=args.seed + index,
                signals=list(SIGNALS.values()),
                span=durations[case] * 1.1,
            )
    rows = summarize(trials)
    print(f"{'case':<16} {'signal':<8} {'trials':>6} {'failures':>8}  phases")
    for row in rows:
        phases = ", ".join(f"{k} {v}" for k, v in sorted(row["phases"].items()))
        counts = f"{row['trials']:>6} {row['failures']:>8}"
        print(f"{row['case']:<16} {row['signal']:<8} {counts}  {phases}")
    failed = [t.to_dict() for t in trials if t.problems]
    for trial in failed:
        print(f"FAILED {trial}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        args.output,
        {
            "machine": machine(),
            "source": source_revision(),
            "seed": args.seed,
            "trials_per_signal": args.trials,
            "run_duration_s": durations,
            "elapsed_s": round(time.monotonic() - started, 1),
            "results": rows,
            "failed_trials": failed,
        },
    )
    print(f"results: {args.output}")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
