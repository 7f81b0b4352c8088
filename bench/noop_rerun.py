"""No-op rerun benchmark: `doit run lane` with nothing to do, next to `doit list --all`.

For each lane count N a throwaway git repository gets a `dodo.py` declaring N lanes (command
`true`, local placement, host_process runtime) spread over ceil(N/10) targets of at most 10
lanes. After one cold `doit run lane`, R no-op reruns and R `doit list --all` calls are timed
(interleaved, same interpreter, cwd and environment). The ratio of their medians is the
figure of merit; the acceptance target is a ratio of at most 1.5 for 30 lanes.

    python bench/noop_rerun.py [--lanes 1,30,300] [--repeat 7] [--check] [--output PATH]

The exit status is 0 even when the target is missed (this is a measurement) unless `--check`
is given; a broken measurement (a failing or non-no-op doit call) exits 2.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pikaci.store import write_json

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "noop_rerun.json"
DOIT = [sys.executable, "-m", "doit"]
LANES_PER_TARGET = 10
TARGET_LANES = 30
TARGET_MAX_RATIO = 1.5
GIT_IDENTITY = ["-c", "user.name=pikaci-bench", "-c", "user.email=bench@localhost"]
SUBPROCESS_TIMEOUT_S = 600.0


class BenchError(Exception):
    """The measurement itself is invalid (a doit call failed or did work)."""


@dataclass
class LaneCountResult:
    lanes: int
    targets: int
    noop_run_s: List[float] = field(default_factory=list)
    list_s: List[float] = field(default_factory=list)
    run_records: int = 0  # created by the whole measurement, cold run included
    noop_run_records: int = 0  # created by the timed no-op reruns alone

    @property
    def ratio(self) -> float:
        return statistics.median(self.noop_run_s) / statistics.median(self.list_s)

    def to_dict(self) -> Dict[str, object]:
        return {
            "lanes": self.lanes,
            "targets": self.targets,
            "noop_run_median_s": round(statistics.median(self.noop_run_s), 6),
            "noop_run_min_s": round(min(self.noop_run_s), 6),
            "list_median_s": round(statistics.median(self.list_s), 6),
            "list_min_s": round(min(self.list_s), 6),
            "ratio": round(self.ratio, 4),
            # one per `doit run` (by design): the cold run plus every no-op rerun
            "run_records_created": self.run_records,
            "noop_run_records_created": self.noop_run_records,
            "noop_run_samples_s": [round(s, 6) for s in self.noop_run_s],
            "list_samples_s": [round(s, 6) for s in self.list_s],
        }


# -- the throwaway repository -----------------------------------------------------------------


def render_dodo(lanes: int) -> str:
    """A dodo.py with `lanes` lanes running `true`, at most 10 per target."""
    blocks = []
    for t in range(math.ceil(lanes / LANES_PER_TARGET)):
        first = t * LANES_PER_TARGET
        lane_src = ",\n".join(
            f"        Lane(id='lane-{i:04d}', command='true', "
            "execution=Execution('local', 'host_process'), timeout_secs=60)"
            for i in range(first, min(first + LANES_PER_TARGET, lanes))
        )
        blocks.append(
            f"    Target(id='target-{t:03d}', description='bench target {t}', lanes=[\n"
            f"{lane_src}\n    ])"
        )
    return (
        "from pikaci.catalog import Catalog, Execution, Lane, Target\n"
        "from pikaci.graph import declare\n"
        "\n"
        "CATALOG = Catalog(targets=[\n" + ",\n".join(blocks) + "\n])\n"
        "DOIT_CONFIG, task_pikaci = declare(CATALOG, __file__)\n"
    )


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", *GIT_IDENTITY, *args],
        cwd=root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )


def make_repository(root: Path, lanes: int) -> None:
    root.mkdir(parents=True)
    (root / "dodo.py").write_text(render_dodo(lanes))
    (root / "README.md").write_text("pikaci no-op rerun benchmark repository\n")
    (root / "src").mkdir()
    (root / "src" / "hello.txt").write_text("hello\n")
    (root / "src" / "data.csv").write_text("a,b\n1,2\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")


def bench_env(state_root: Path, pycache: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIKACI_")}
    env["PIKACI_STATE_ROOT"] = str(state_root)
    # Bytecode goes to a private cache: a __pycache__ next to dodo.py would be untracked and
    # change the snapshot, and without any cache every call would recompile pikaci and
    # dodo.py, which is not the steady state being measured. The cold run fills the cache.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


# -- measuring --------------------------------------------------------------------------------


def timed_doit(
    args: Sequence[str], cwd: Path, env: Dict[str, str]
) -> Tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [*DOIT, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    return time.perf_counter() - start, proc


def failure(what: str, proc: subprocess.CompletedProcess[str]) -> BenchError:
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
    return BenchError(f"{what} exited {proc.returncode}:\n{tail}")


def executed_tasks(stdout: str) -> List[str]:
    """doit's `.  <task>` lines: tasks that actually ran."""
    return [line[3:].strip() for line in stdout.splitlines() if line.startswith(".  ")]


def count_run_records(state_root: Path) -> int:
    runs = state_root / "runs"
    if not runs.is_dir():
        return 0
    return sum(1 for p in runs.iterdir() if (p / "run.json").is_file())


def measure(lanes: int, repeat: int) -> LaneCountResult:
    result = LaneCountResult(lanes=lanes, targets=math.ceil(lanes / LANES_PER_TARGET))
    with tempfile.TemporaryDirectory(prefix="pikaci-bench-noop-") as tmp:
        root = Path(tmp) / "repo"
        state_root = Path(tmp) / "state"
        make_repository(root, lanes)
        env = bench_env(state_root, Path(tmp) / "pycache")
        before = count_run_records(state_root)

        _, cold = timed_doit(["run", "lane"], root, env)
        if cold.returncode != 0:
            raise failure(f"{lanes} lanes: cold `doit run lane`", cold)
        ran = [name for name in executed_tasks(cold.stdout) if name.startswith("execute:")]
        if len(ran) != lanes:
            raise BenchError(f"{lanes} lanes: cold run executed {len(ran)} lanes")
        after_cold = count_run_records(state_root)
        _, warm = timed_doit(["list", "--all"], root, env)  # untimed: warms the list path too
        if warm.returncode != 0:
            raise failure(f"{lanes} lanes: warm-up `doit list --all`", warm)

        for i in range(repeat):  # interleaved so that drift hits both sides alike
            elapsed, proc = timed_doit(["run", "lane"], root, env)
            if proc.returncode != 0:
                raise failure(f"{lanes} lanes: no-op `doit run lane` #{i + 1}", proc)
            executed = executed_tasks(proc.stdout)
            if executed:
                raise BenchError(
                    f"{lanes} lanes: no-op `doit run lane` #{i + 1} executed "
                    f"{len(executed)} task(s), e.g. {', '.join(executed[:5])}"
                )
            result.noop_run_s.append(elapsed)

            elapsed, proc = timed_doit(["list", "--all"], root, env)
            if proc.returncode != 0:
                raise failure(f"{lanes} lanes: `doit list --all` #{i + 1}", proc)
            result.list_s.append(elapsed)

        after = count_run_records(state_root)
        result.run_records = after - before
        result.noop_run_records = after - after_cold
    return result


# -- reporting --------------------------------------------------------------------------------


def utc_now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine() -> Dict[str, object]:
    """What every benchmark's result file says about the machine it ran on."""
    return {"python": platform.python_version(), "nproc": nproc(), "platform": platform.platform()}


def target_met(results: Sequence[LaneCountResult]) -> Optional[bool]:
    for result in results:
        if result.lanes == TARGET_LANES:
            return result.ratio <= TARGET_MAX_RATIO
    return None


def source_revision() -> Dict[str, object]:
    """HEAD of the checkout being measured and whether it has local changes (read-only git)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # never take index.lock

    def git_out(*args: str) -> Optional[str]:
        try:
            proc = subprocess.run(
                ["git", "-C", str(BENCH_DIR.parent), *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    status = git_out("status", "--porcelain", "--untracked-files=no")
    return {"head": git_out("rev-parse", "HEAD"), "dirty": bool(status) if status else False}


def build_report(results: Sequence[LaneCountResult], repeat: int) -> Dict[str, object]:
    return {
        "benchmark": "noop_rerun",
        "created_at": utc_now(),
        "source": source_revision(),
        "machine": machine(),
        "doit_version": metadata.version("doit"),
        "repeat": repeat,
        "results": [result.to_dict() for result in results],
        "target": {
            "lanes": TARGET_LANES,
            "max_ratio": TARGET_MAX_RATIO,
            "met": target_met(results),
        },
    }


def format_table(results: Sequence[LaneCountResult]) -> str:
    header = (
        f"{'lanes':>5} {'targets':>7} {'run med s':>10} {'run min s':>10} "
        f"{'list med s':>10} {'list min s':>10} {'ratio':>6} {'no-op run records':>17}"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        rows.append(
            f"{r.lanes:>5} {r.targets:>7} {statistics.median(r.noop_run_s):>10.3f} "
            f"{min(r.noop_run_s):>10.3f} {statistics.median(r.list_s):>10.3f} "
            f"{min(r.list_s):>10.3f} {r.ratio:>6.2f} {r.noop_run_records:>17}"
        )
    return "\n".join(rows)


def target_line(results: Sequence[LaneCountResult]) -> str:
    measured = next((r for r in results if r.lanes == TARGET_LANES), None)
    if measured is None:
        return f"target NOT MEASURED: {TARGET_LANES} lanes not in --lanes"
    verdict = "met" if measured.ratio <= TARGET_MAX_RATIO else "MISSED"
    return (
        f"target {verdict}: {TARGET_LANES}-lane no-op rerun / doit list = "
        f"{measured.ratio:.2f}x (max {TARGET_MAX_RATIO}x)"
    )


# -- command line -----------------------------------------------------------------------------


def parse_lanes(text: str) -> List[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"lane counts must be positive, got {text!r}")
    return counts


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lanes", type=parse_lanes, default=[1, 30, 300], help="e.g. 1,30,300")
    parser.add_argument("--repeat", type=positive_int, default=7, help="timed runs per side")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    args = parser.parse_args(argv)
    lane_counts: List[int] = args.lanes
    repeat: int = args.repeat

    results: List[LaneCountResult] = []
    for lanes in lane_counts:
        print(f"measuring {lanes} lane(s), {repeat} repetitions ...", file=sys.stderr, flush=True)
        try:
            results.append(measure(lanes, repeat))
        except (BenchError, subprocess.SubprocessError, OSError) as exc:
            print(f"noop_rerun: measurement failed: {exc}", file=sys.stderr)
            return 2

    report = build_report(results, repeat)
    output: Path = args.output
    write_json(output, report)

    print(
        f"no-op `doit run lane` vs `doit list --all` (python {platform.python_version()}, "
        f"doit {report['doit_version']}, {nproc()} cpu(s), repeat {repeat})"
    )
    print(format_table(results))
    print(target_line(results))
    print(f"results: {output}")
    if args.check and target_met(results) is not True:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
