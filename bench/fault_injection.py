"""Fault injection report: `doit run` killed at moments spread over whole runs, and the
other faults a CI machine meets (two runs at once, a full disk, a lost builder, an incusd
restart), per case.

    .venv/bin/python bench/fault_injection.py          # 30 kills per signal, 5 of the others
    .venv/bin/python bench/fault_injection.py --trials 5 --cases local_sandbox
    .venv/bin/python bench/fault_injection.py --output /tmp/faults.json --check

Each trial forgets doit's state, starts `doit run target:main`, sends SIGKILL or SIGTERM after
a delay spread evenly (with jitter) over one run's duration, and checks that every record reads,
the run is marked, nothing is left behind (processes, the builder's processes, temporary
directories, Incus instances) and the next run passes; see tests/fixtures/faults.py. Kill
cases (`--trials` per signal):

- local_sandbox: a staged target (nix-built payloads) whose lane runs in the local sandbox:
  kills land in the snapshot, the payload builds, the lane and its collection;
- remote_sandbox: two `remote_ssh` + `bubblewrap` lanes on a loopback sshd builder (root
  only): kills land in the snapshot, its upload, the lanes and the pulls;
- remote_incus: a `remote_ssh` + `incus` lane on that builder with the real daemon (root
  only): kills land in the upload, the instance's creation, the lane and the collection.

Other cases (`--repeats` each), from tests/fixtures/fault_scenarios.py: two_doit_processes,
disk_full (a 2 MiB tmpfs state root), sshd_cut_upload and sshd_cut_execute (the builder's
sshd killed), incusd_restart (root only for all but the first).

Results go to bench/results/fault_injection.json (or --output): per case and signal the trial
count, the failures and where the faults landed, plus every failing trial. With --check the
script exits 1 when any trial failed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

from noop_rerun import machine, positive_int, source_revision

from pikaci.store import write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # the harness and the project helpers live in tests/

from tests.fixtures import fault_scenarios as scenarios  # noqa: E402
from tests.fixtures.faults import Harness, Trial, processes_mentioning, run_trials  # noqa: E402
from tests.fixtures.incus import Incus, incus_builder_env, set_up_incus  # noqa: E402
from tests.fixtures.projects import LaneSpec, Project, new_repository, render_dodo  # noqa: E402
from tests.fixtures.sshd import USER, Sshd, running_sshd  # noqa: E402
from tests.fixtures.staged import BUILD_ROOT, DEPS_ROOT, new_staged_project  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "fault_injection.json"
KILL_CASES = ("local_sandbox", "remote_sandbox", "remote_incus")
SCENARIOS = (
    "two_doit_processes",
    "disk_full",
    "sshd_cut_upload",
    "sshd_cut_execute",
    "incusd_restart",
)
CASES = KILL_CASES + SCENARIOS
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}
OneTrial = Callable[[], Trial]


def need_root(case: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"{case} needs root (a loopback sshd user, Incus or a tmpfs mount)")


def project_with(scratch: Path, lanes: List[LaneSpec]) -> Project:
    return new_repository(scratch / "repo", scratch / "state", {"dodo.py": render_dodo(lanes)})


@contextlib.contextmanager
def incus_on_builder() -> Iterator[Tuple[Incus, Sshd, Dict[str, str]]]:
    """(Incus, the loopback builder, its env) with the builder's user in incus-admin."""
    try:
        incus = set_up_incus()
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from exc
    with running_sshd() as server:
        yield incus, server, incus_builder_env(server, incus)


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
    need_root("remote_sandbox")
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
        project = project_with(scratch, lanes)
        yield Harness(
            "remote_sandbox",
            project,
            {**project.env, **env},
            leftovers=lambda: processes_mentioning(work, user=USER),
            remote_root=Path(work),
        )


@contextlib.contextmanager
def remote_incus(scratch: Path) -> Iterator[Harness]:
    need_root("remote_incus")
    with incus_on_builder() as (incus, _server, env):
        lane = LaneSpec("a", "echo in the guest; sleep 1", placement="remote_ssh", runtime="incus")
        project = project_with(scratch, [lane])
        work = env["PIKACI_BUILDER_WORK_DIR"]
        yield Harness(
            "remote_incus",
            project,
            {**project.env, **env},
            leftovers=lambda: incus.leaked() + processes_mentioning(work, user=USER),
            remote_root=Path(work),
        )


@contextlib.contextmanager
def scenario(case: str, scratch: Path) -> Iterator[OneTrial]:
    """One trial of `case`, as often as called, on one throwaway project."""
    if case == "two_doit_processes":
        project = project_with(scratch, scenarios.CONCURRENT_LANES)
        yield lambda: scenarios.concurrent_trial(project)
        return
    need_root(case)
    if case == "disk_full":
        small = scratch / "small"
        small.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", f"size={scenarios.SMALL_DISK}", "tmpfs"]
        subprocess.run([*mount, str(small)], check=True)
        try:
            project = project_with(scratch, [scenarios.DISK_FILL_LANE])
            yield lambda: scenarios.disk_full_trial(project, small)
        finally:
            subprocess.run(["umount", str(small)], check=False)
    elif case.startswith("sshd_cut_"):
        moment = case[len("sshd_cut_") :]
        with running_sshd() as server:
            project = project_with(scratch, [scenarios.sshd_cut_lane("first")])
            yield lambda: _named(scenarios.sshd_cut_trial(project, server, moment), case)
    else:
        with incus_on_builder() as (incus, _server, env):
            project = project_with(scratch, [scenarios.INCUSD_LANE])
            run_env = {**project.env, **env}
            work = env["PIKACI_BUILDER_WORK_DIR"]
            yield lambda: scenarios.incusd_restart_trial(project, run_env, incus, work)


def _named(trial: Trial, case: str) -> Trial:
    trial.case = case
    return trial


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
        "--trials", type=positive_int, default=30, help="kills per kill case and signal"
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="trials of each other case")
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
    builders = {
        "local_sandbox": local_sandbox,
        "remote_sandbox": remote_sandbox,
        "remote_incus": remote_incus,
    }
    trials: List[Trial] = []
    durations: Dict[str, float] = {}
    started = time.monotonic()
    for index, case in enumerate(cases):
        with contextlib.ExitStack() as stack:
            scratch = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="pikaci-faults-"))
            )
            if case in SCENARIOS:
                one = stack.enter_context(scenario(case, scratch))
                print(f"{case}: {args.repeats} trials", flush=True)
                trials += [one() for _ in range(args.repeats)]
                continue
            harness = stack.enter_context(builders[case](scratch))
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
    print(f"{'case':<20} {'signal':<8} {'trials':>6} {'failures':>8}  phases")
    for row in rows:
        phases = ", ".join(f"{k} {v}" for k, v in sorted(row["phases"].items()))
        counts = f"{row['trials']:>6} {row['failures']:>8}"
        print(f"{row['case']:<20} {row['signal']:<8} {counts}  {phases}")
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
            "repeats_per_scenario": args.repeats,
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
