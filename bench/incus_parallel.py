"""Remote Incus lanes run two at a time: a target of 4 lanes against one lane, on the loopback
builder with the real daemon.

Run as root on a machine where `scripts/incus-setup.sh` can run (the tests' loopback sshd and
the test image; the lanes use the set-up script's copy-on-write pool when there is one):

    .venv/bin/python bench/incus_parallel.py [--repeat 3] [--sleep 3] [--output FILE]

Each lane is `remote_ssh` + `incus` and sleeps `--sleep` seconds. Each repeat times, after
`doit forget --all`: `doit run lane:s0` (one lane), `doit run target:main` (4 lanes, the default
PIKACI_MAX_CONCURRENT_EXECUTES of 2) and `doit run -n 1 target:main` (one at a time). Reported:
the medians, `four_vs_one` (4 lanes at the default over one lane: 2.0 would be perfect
pairing, 4.0 no overlap), `sequential_vs_one`, and the most lanes seen executing at once in
the records' phase timestamps. Results: `bench/results/incus_parallel.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from noop_rerun import BenchError, bench_env, failure, machine, source_revision, timed_doit, utc_now

from pikaci.store import write_json

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.incus import (  # noqa: E402
    incus_builder_env,
    most_lanes_at_once,
    set_up_incus,
)
from tests.fixtures.projects import LaneSpec, new_repository, render_dodo  # noqa: E402
from tests.fixtures.sshd import running_sshd  # noqa: E402

DEFAULT_OUTPUT = BENCH_DIR / "results" / "incus_parallel.json"
LANES = 4


def latest_record(state: Path) -> Dict[str, Any]:
    runs = sorted(path for path in (state / "runs").iterdir() if not path.name.startswith("."))
    return json.loads((runs[-1] / "run.json").read_text())  # type: ignore[no-any-return]


def measure(repeat: int, sleep: float) -> Dict[str, Any]:
    incus = set_up_incus()
    with running_sshd() as server, tempfile.TemporaryDirectory(prefix="pikaci-bench-") as scratch:
        root, state = Path(scratch) / "repo", Path(scratch) / "state"
        lanes = [
            LaneSpec(f"s{i}", f"sleep {sleep:g}", placement="remote_ssh", runtime="incus")
            for i in range(LANES)
        ]
        new_repository(root, state, {"dodo.py": render_dodo(lanes)})
        env = {
            **bench_env(state, Path(scratch) / "pycache"),
            **incus_builder_env(server, incus),
        }
        kinds = {
            "one_lane": ["run", "lane:s0"],
            "four_lanes_default": ["run", "target:main"],
            "four_lanes_sequential": ["run", "-n", "1", "target:main"],
        }
        samples: Dict[str, List[float]] = {kind: [] for kind in kinds}
        overlap: Dict[str, int] = {}
        for index in range(repeat + 1):  # the first round warms the snapshot and the base
            for kind, args in kinds.items():
                _, forget = timed_doit(["forget", "--all"], root, env)
                if forget.returncode != 0:
                    raise failure("doit forget", forget)
                seconds, done = timed_doit(args, root, env)
                if done.returncode != 0:
                    raise failure(f"doit {' '.join(args)}", done)
                if index:
                    samples[kind].append(seconds)
                    overlap[kind] = most_lanes_at_once(latest_record(state)["jobs"])
        medians = {kind: statistics.median(values) for kind, values in samples.items()}
        one = medians["one_lane"]
        return {
            "medians_s": {kind: round(value, 3) for kind, value in medians.items()},
            "four_vs_one": round(medians["four_lanes_default"] / one, 3),
            "sequential_vs_one": round(medians["four_lanes_sequential"] / one, 3),
            "most_lanes_at_once": overlap,
            "storage_pool": incus.storage_pool,
            "samples_s": samples,
        }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=3.0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.sleep <= 0:
        parser.error("--repeat and --sleep must be positive")
    try:
        summary = measure(args.repeat, args.sleep)
    except (BenchError, RuntimeError) as exc:
        print(f"incus_parallel: {exc}", file=sys.stderr)
        return 2
    report = {
        "benchmark": "incus_parallel",
        "created_at": utc_now(),
        "source": source_revision(),
        "machine": machine(),
        "repeat": args.repeat,
        "lane_sleep_s": args.sleep,
        "lanes": LANES,
        **summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, report)
    medians = summary["medians_s"]
    print(f"remote incus lanes sleeping {args.sleep:g} s, repeat {args.repeat}")
    print(f"  one lane                     {medians['one_lane']:>7.2f} s")
    print(
        f"  four lanes, default (2)      {medians['four_lanes_default']:>7.2f} s"
        f"   x{summary['four_vs_one']:.2f} of one"
    )
    print(
        f"  four lanes, -n 1             {medians['four_lanes_sequential']:>7.2f} s"
        f"   x{summary['sequential_vs_one']:.2f} of one"
    )
    print(f"  most lanes at once: {summary['most_lanes_at_once']}")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
