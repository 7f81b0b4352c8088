"""Per-phase times of a trivial Incus lane and pikaci's overhead on top of the guest command.

Run as root on a machine where `scripts/incus-setup.sh` has run (it imports the test image):

    .venv/bin/python bench/incus_lane.py [--repeat 7] [--output FILE]

A throwaway repository declares one `local` + `incus` lane running `true` (a container from
the test image, the default profile only). Each of R runs is `doit forget` + `doit run`; the
phases come from the job record's `remote_linux_vm_execution`. The guest command's own cost is
measured apart: `incus exec <running instance> -- true` on a container started once. Overhead =
the lane's execute time (sum of its phases) minus that bare exec. It is measured on each
storage pool of `--pools` (default: the set-up script's copy-on-write pool `pikaci`, then the
`dir` pool `default`), and the results say which driver and creation path the runtime took
there. Results: `bench/results/incus_lane.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from noop_rerun import (
    BenchError,
    bench_env,
    failure,
    machine,
    source_revision,
    timed_doit,
    utc_now,
)

from pikaci.incus.config import PHASES
from pikaci.store import write_json

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.projects import LaneSpec, new_repository, render_dodo  # noqa: E402

DEFAULT_OUTPUT = BENCH_DIR / "results" / "incus_lane.json"


CREATION_LINE = re.compile(r"storage pool (\S+) \((\S+)\): instances by (.+)$", re.M)


def incus_env(alias: str, project: str, pool: str, create: str = "auto") -> Dict[str, str]:
    return {
        "PIKACI_INCUS_CREATE": create,
        "PIKACI_INCUS_PROJECT": project,
        "PIKACI_INCUS_PROFILE": "default",
        "PIKACI_INCUS_IMAGE_ALIAS": alias,
        "PIKACI_INCUS_INSTANCE_TYPE": "container",
        "PIKACI_INCUS_SUDO": "0",
        "PIKACI_INCUS_STORAGE_POOL": pool,
    }


def default_pools() -> List[str]:
    """The set-up script's copy-on-write pool (when it could make one), then `default`."""
    found = subprocess.run(["incus", "storage", "show", "pikaci"], capture_output=True)
    return ["pikaci", "default"] if found.returncode == 0 else ["default"]


def bare_exec_seconds(alias: str, project: str, repeat: int) -> List[float]:
    """`incus exec … true` on an already running container: the guest command's floor."""
    name = f"pikaci-bench-{int(time.time())}"
    base = ["incus", "--project", project]
    subprocess.run([*base, "launch", alias, name], check=True, capture_output=True)
    try:
        subprocess.run([*base, "exec", name, "--", "true"], check=True, capture_output=True)
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            subprocess.run([*base, "exec", name, "--", "true"], check=True, capture_output=True)
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        subprocess.run([*base, "delete", "--force", name], capture_output=True, check=False)


def lane_samples(
    alias: str, project: str, pool: str, create: str, repeat: int
) -> Tuple[List[Dict[str, float]], Dict[str, str]]:
    """Per-run phase times, and how the runtime created its instances (from the job log)."""
    with tempfile.TemporaryDirectory(prefix="pikaci-bench-incus-") as scratch:
        root, state = Path(scratch) / "repo", Path(scratch) / "state"
        lane = LaneSpec("trivial", "true", placement="local", runtime="incus")
        new_repository(root, state, {"dodo.py": render_dodo([lane])})
        env = {
            **bench_env(state, Path(scratch) / "pycache"),
            **incus_env(alias, project, pool, create),
        }
        samples = []
        creation: Dict[str, str] = {}
        for index in range(repeat + 1):  # the first run warms caches and is not counted
            _, forget = timed_doit(["forget", "--all"], root, env)
            if forget.returncode != 0:
                raise failure("doit forget", forget)
            seconds, done = timed_doit(["run", "lane:trivial"], root, env)
            if done.returncode != 0:
                raise failure("doit run lane:trivial", done)
            if index == 0:
                continue
            runs = sorted((state / "runs").iterdir())
            record = json.loads((runs[-1] / "run.json").read_text())
            job = record["jobs"][0]
            said = CREATION_LINE.search(Path(job["host_log_path"]).read_text())
            if said:
                creation = {"pool": said[1], "driver": said[2], "path": said[3]}
            execution = job["remote_linux_vm_execution"]
            sample = {p["phase"]: p["duration_ms"] / 1000 for p in execution["phases"]}
            sample["execute_total"] = sum(sample[name] for name in PHASES)
            sample["doit_run_wall"] = seconds
            samples.append(sample)
        return samples, creation


def summarize(samples: List[Dict[str, float]], bare: List[float]) -> Dict[str, object]:
    keys = [*PHASES, "execute_total", "doit_run_wall"]
    medians = {key: statistics.median(s[key] for s in samples) for key in keys}
    floor = statistics.median(bare)
    return {
        "phases_median_s": {key: round(medians[key], 4) for key in PHASES},
        "execute_total_median_s": round(medians["execute_total"], 4),
        "doit_run_wall_median_s": round(medians["doit_run_wall"], 4),
        "bare_exec_median_s": round(floor, 4),
        "overhead_median_s": round(medians["execute_total"] - floor, 4),
        "samples": samples,
        "bare_exec_samples": bare,
    }


def format_table(summary: Dict[str, object]) -> str:
    phases = summary["phases_median_s"]
    assert isinstance(phases, dict)
    lines = ["phase                      median s", "-" * 36]
    lines += [f"{name:<26} {phases[name]:>8.3f}" for name in PHASES]
    lines += [
        "-" * 36,
        f"{'execute (all phases)':<26} {summary['execute_total_median_s']:>8.3f}",
        f"{'bare incus exec true':<26} {summary['bare_exec_median_s']:>8.3f}",
        f"{'overhead on the command':<26} {summary['overhead_median_s']:>8.3f}",
        f"{'whole doit run':<26} {summary['doit_run_wall_median_s']:>8.3f}",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--alias", default="pikaci/test")
    parser.add_argument("--project", default="default")
    parser.add_argument(
        "--pools",
        default="",
        help="comma-separated storage pools, one measurement each (default: pikaci, default)",
    )
    parser.add_argument(
        "--create", choices=("auto", "image", "copy"), default="auto", help="PIKACI_INCUS_CREATE"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be positive")
    pools = [name for name in args.pools.split(",") if name] or default_pools()
    pool_reports: List[Tuple[Dict[str, str], Dict[str, object]]] = []
    try:
        bare = bare_exec_seconds(args.alias, args.project, args.repeat)
        for pool in pools:
            samples, creation = lane_samples(
                args.alias, args.project, pool, args.create, args.repeat
            )
            pool_reports.append((creation, summarize(samples, bare)))
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"incus_lane: {exc}", file=sys.stderr)
        return 2
    report = {
        "benchmark": "incus_lane",
        "created_at": utc_now(),
        "source": source_revision(),
        "machine": machine(),
        "repeat": args.repeat,
        "image_alias": args.alias,
        # the first pool's figures at the top, as before; every pool's under `pools`
        "storage": pool_reports[0][0],
        **{key: value for key, value in pool_reports[0][1].items() if key != "samples"},
        "pools": [{"storage": storage, **summary} for storage, summary in pool_reports],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, report)
    for storage, summary in pool_reports:
        print(
            f"trivial local+incus lane (container), repeat {args.repeat}, storage pool "
            f"{storage.get('pool')} ({storage.get('driver')}), instances by {storage.get('path')}"
        )
        print(format_table(summary))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
