"""Staged payload benchmark: cold and warm nix builds of the demo payloads, and the no-op
rerun of the staged demo lane next to `doit list`.

    python bench/staged_payloads.py [--repeat 5] [--output bench/results/staged_payloads.json]

Works on a fresh clone of this repository's committed state in a temporary directory:
- cold build: a salt appended to one package source changes the payloads' inputs, so nix
  really builds both (deps, then build); timed from the run record's prepare timings;
- warm build: `doit forget` of the two build tasks, so nix runs again but finds both outputs
  in the store (evaluation and lookup only);
- no-op rerun: `doit run lane:demo` with everything up to date (no nix process), as a whole
  process, next to `doit list --all` on the same catalog.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import orjson
from noop_rerun import (
    bench_env,
    executed_tasks,
    failure,
    machine,
    source_revision,
    timed_doit,
)

from pikaci.store import write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "staged_payloads.json"
BUILD_NODES = ("prepare-demo-workspace-deps", "prepare-demo-workspace-build")


def latest_timings(state_root: Path) -> Dict[str, int]:
    runs = sorted((state_root / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    record = orjson.loads(runs[-1].read_bytes())
    return {t["node_id"]: int(t["duration_ms"]) for t in record["prepare_timings"]}


def run_demo(root: Path, env: Dict[str, str], must_build: bool) -> Dict[str, int]:
    _, proc = timed_doit(["run", "lane:demo"], root, env)
    if proc.returncode != 0:
        raise failure("doit run lane:demo", proc)
    built = [t for t in executed_tasks(proc.stdout) if t.startswith("build:")]
    if must_build and len(built) != 2:
        raise failure(f"expected both payload builds to run, ran {built}", proc)
    timings = latest_timings(Path(env["PIKACI_STATE_ROOT"]))
    return {node: timings[node] for node in BUILD_NODES}


def summary(samples: Sequence[float]) -> Dict[str, float]:
    return {"median": round(statistics.median(samples), 4), "min": round(min(samples), 4)}


def measure(repeat: int) -> Dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="pikaci-bench-staged-") as tmp:
        root = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(root)], check=True)
        env = bench_env(Path(tmp) / "state", Path(tmp) / "pycache")
        salted = root / "pikaci" / "ids.py"
        original = salted.read_text()
        cold: List[Dict[str, int]] = []
        warm: List[Dict[str, int]] = []
        for index in range(repeat):
            # a fresh salt per repetition: new payload inputs, so nix builds for real
            salted.write_text(f"{original}\n# bench salt {os.getpid()}-{index}\n")
            cold.append(run_demo(root, env, must_build=True))
            for task in ("build:demo:deps", "build:demo:build"):
                subprocess.run(
                    [sys.executable, "-m", "doit", "forget", task],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    check=True,
                )
            warm.append(run_demo(root, env, must_build=True))
        noop: List[float] = []
        listing: List[float] = []
        for _ in range(repeat):
            elapsed, proc = timed_doit(["run", "lane:demo"], root, env)
            if proc.returncode != 0 or executed_tasks(proc.stdout):
                raise failure("no-op rerun executed something", proc)
            noop.append(elapsed)
            elapsed, proc = timed_doit(["list", "--all"], root, env)
            if proc.returncode != 0:
                raise failure("doit list", proc)
            listing.append(elapsed)
    return {
        "cold_build_ms": {
            node: summary([float(sample[node]) for sample in cold]) for node in BUILD_NODES
        },
        "warm_build_ms": {
            node: summary([float(sample[node]) for sample in warm]) for node in BUILD_NODES
        },
        "noop_rerun_s": summary(noop),
        "list_s": summary(listing),
        "noop_rerun_vs_list": round(statistics.median(noop) / statistics.median(listing), 3),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    results = measure(max(1, args.repeat))
    report = {
        "benchmark": "staged_payloads",
        "machine": machine(),
        "nix": subprocess.run(
            ["nix", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "source": source_revision(),
        "repeat": args.repeat,
        "results": results,
    }
    write_json(args.output, report)
    cold = results["cold_build_ms"]
    warm = results["warm_build_ms"]
    assert isinstance(cold, dict) and isinstance(warm, dict)
    print(f"staged demo payloads (repeat {args.repeat}), median / min")
    for node in BUILD_NODES:
        print(
            f"  {node:32} cold {cold[node]['median']:7.0f} / {cold[node]['min']:5.0f} ms"
            f"   warm {warm[node]['median']:7.0f} / {warm[node]['min']:5.0f} ms"
        )
    noop = results["noop_rerun_s"]
    listing = results["list_s"]
    assert isinstance(noop, dict) and isinstance(listing, dict)
    print(
        f"  no-op rerun of lane:demo       {noop['median']:.3f} s "
        f"(doit list {listing['median']:.3f} s, ratio {results['noop_rerun_vs_list']})"
    )
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
