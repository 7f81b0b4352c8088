"""Remote placement benchmark: SSH round trips per staged `remote_ssh` lane, cold and no-op run
times, and snapshot upload throughput next to rsync and `tar | ssh tar`.

    python bench/remote_upload.py [--lanes 1,5] [--repeat 5] [--files 2000] [--mib 64]
                                  [--output bench/results/remote_upload.json]

Run it as root: the builder is this machine, a loopback sshd (tests/fixtures/sshd.py) with its own
login user `pikaci-remote`, which only root can create. It also needs nix, bwrap, busybox-static,
rsync and the venv's test extras (the staged project helpers live in tests/fixtures/).

Round trips: for every lane count K and payload mode (`builder`, `copy`), each repetition makes
a fresh staged project (a flake built by nix/ci/lib.nix on a busybox carried in the repository)
with K `remote_ssh` + `bubblewrap` lanes in one target, a fresh builder work dir and chroot
store, then times a cold `doit run target:main` (the shared SSH master closed first) and one
no-op rerun (the master still up, as it is within ControlPersist). A counting `ssh` first on
PATH records every invocation; those reaching the builder (all but `ssh -O ...`, which only
talks to the local master) are the round trips.

Throughput: a synthetic tree (small files and 1 MiB files) is made into a snapshot and uploaded
into a fresh remote dir per sample by `publish_snapshot` over a warm `Transport`, by
`rsync -a` and by `tar | ssh tar`, the two baselines over the same multiplexed connection.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from noop_rerun import (
    BenchError,
    bench_env,
    executed_tasks,
    failure,
    machine,
    nproc,
    parse_lanes,
    positive_int,
    source_revision,
    timed_doit,
    utc_now,
)

from pikaci.builder.layout import RemoteLayout
from pikaci.builder.snapshots import publish_snapshot
from pikaci.builder.transport import Builder, Transport
from pikaci.snapshot import SnapshotFilter, create_snapshot
from pikaci.store import write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # the loopback sshd and the project helpers live in tests/

from tests.fixtures.projects import LaneSpec, new_repository  # noqa: E402
from tests.fixtures.sshd import Sshd, running_sshd  # noqa: E402
from tests.fixtures.staged import (  # noqa: E402
    BUILD_ROOT,
    BUSYBOX,
    DEPS_ROOT,
    render_staged_dodo,
    render_staged_flake,
)

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "remote_upload.json"
MODES = ("builder", "copy")
TARGET = "main"
MIB = 1 << 20
LARGE_FILE = MIB
LARGE_SHARE = 0.75  # of the tree's bytes in 1 MiB files, the rest in small ones
FILES_PER_DIR = 100
WRAPPERS = {
    "run-check": (
        f"cat {DEPS_ROOT}/share/inputs/hello.txt\n"
        f'cat {BUILD_ROOT}/share/all.txt > "$ARTIFACTS/all.txt"\n'
    ),
}


def summary(samples: Sequence[float], digits: int = 4) -> Dict[str, object]:
    return {
        "median": round(statistics.median(samples), digits),
        "min": round(min(samples), digits),
        "samples": [round(s, digits) for s in samples],
    }


# -- round trips per lane ---------------------------------------------------------------------


@dataclass
class LaneResult:
    lanes: int
    mode: str
    cold_trips: List[int] = field(default_factory=list)
    noop_trips: List[int] = field(default_factory=list)
    cold_s: List[float] = field(default_factory=list)
    noop_s: List[float] = field(default_factory=list)
    # what the last sample's round trips were, by kind (see `kind_of`)
    cold_kinds: Dict[str, int] = field(default_factory=dict)
    noop_kinds: Dict[str, int] = field(default_factory=dict)

    def per_lane(self, trips: Sequence[int]) -> float:
        return statistics.median(trips) / self.lanes

    def to_dict(self) -> Dict[str, object]:
        return {
            "lanes": self.lanes,
            "mode": self.mode,
            "cold_round_trips": summary([float(t) for t in self.cold_trips], 1),
            "cold_round_trips_per_lane": round(self.per_lane(self.cold_trips), 3),
            "noop_round_trips": summary([float(t) for t in self.noop_trips], 1),
            "noop_round_trips_per_lane": round(self.per_lane(self.noop_trips), 3),
            "cold_run_s": summary(self.cold_s),
            "noop_rerun_s": summary(self.noop_s),
            "cold_round_trip_kinds": self.cold_kinds,
            "noop_round_trip_kinds": self.noop_kinds,
        }


def counting_ssh(bindir: Path) -> Path:
    """An `ssh` for the front of PATH that appends each invocation's arguments (up to the first
    line of the remote command) to `<bindir>/calls`; returns that file."""
    real = shutil.which("ssh")
    if real is None:
        raise BenchError("ssh is not installed")
    bindir.mkdir(parents=True)
    script = bindir / "ssh"
    calls = bindir / "calls"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" | head -n 1 >> {shlex.quote(str(calls))}\n'
        f'exec {shlex.quote(real)} "$@"\n'
    )
    script.chmod(0o755)
    return calls


def take_round_trips(calls: Path) -> List[str]:
    """The invocations since the last call that reached the builder (`-O` ones stay local)."""
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.write_text("")
    return [line for line in lines if " -O " not in f" {line} "]


def kind_of(call: str) -> str:
    """connect: a new master; command: a pikaci transport command over it; nix: nix's own ssh
    (store protocol, `nix copy`); other: anything else."""
    words = f" {call} "
    if " -N " in words and "ControlMaster=yes" in words:
        return "connect"
    if "setsid -w sh -c" in words:
        return "command"
    if "nix-store --serve" in words or "nix-daemon" in words:
        return "nix"
    return "other"


def kinds(calls: Sequence[str]) -> Dict[str, int]:
    counted: Dict[str, int] = {}
    for call in calls:
        kind = kind_of(call)
        counted[kind] = counted.get(kind, 0) + 1
    return dict(sorted(counted.items()))


def close_run_master(server: Sshd) -> None:
    """Stop the master the doit runs share (pikaci's per-user control dir), so the next cold
    run pays for its own connection; a no-op when none is up."""
    control = Path(tempfile.gettempdir()) / f"pikaci-ssh-{os.getuid()}" / "%C"
    subprocess.run(
        [
            "ssh",
            "-F",
            str(server.ssh_config),
            "-o",
            f"ControlPath={control}",
            "-O",
            "exit",
            server.host,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=15,
        check=False,
    )


def make_staged_repo(root: Path, state_root: Path, lanes: int, mode: str) -> None:
    """The tests' hermetic staged project: K bubblewrap lanes on the builder in one target."""
    (root / "nix" / "busybox" / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "nix" / "busybox" / "bin" / "busybox")
    (root / "nix" / "busybox" / "bin" / "sh").symlink_to("busybox")
    # a fresh tag per project: new derivations, so the cold run really builds (also locally)
    tag = f"bench{secrets.token_hex(4)}"
    specs = [
        LaneSpec(
            f"lane-{i}",
            f"{BUILD_ROOT}/bin/run-check",
            target=TARGET,
            placement="remote_ssh",
            runtime="bubblewrap",
        )
        for i in range(lanes)
    ]
    new_repository(
        root,
        state_root,
        {
            "flake.nix": render_staged_flake(tag, WRAPPERS, hermetic=True),
            "flake.lock": '{"nodes": {"root": {}}, "root": "root", "version": 7}\n',
            "nix/ci/lib.nix": (REPO_ROOT / "nix" / "ci" / "lib.nix").read_text(),
            "dodo.py": render_staged_dodo({TARGET: specs}, realize=mode),
        },
    )


def measure_lanes(server: Sshd, lanes: int, mode: str, repeat: int, tmp: Path) -> LaneResult:
    result = LaneResult(lanes=lanes, mode=mode)
    for index in range(repeat):
        base = tmp / f"{mode}-{lanes}-{index}"
        root = base / "repo"
        base.mkdir()
        make_staged_repo(root, base / "state", lanes, mode)
        calls = counting_ssh(base / "counting-ssh")
        env = bench_env(base / "state", tmp / "pycache")
        env.update(
            {
                "PIKACI_BUILDER": server.host,
                "PIKACI_BUILDER_SSH_CONFIG": str(server.ssh_config),
                "PIKACI_BUILDER_WORK_DIR": str(server.work_dir()),
                "PIKACI_BUILDER_NIX_STORE": f"{server.work_dir()}/store",
                "PATH": f"{calls.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        what = f"{lanes} lane(s), {mode} payloads, #{index + 1}"

        close_run_master(server)
        take_round_trips(calls)
        elapsed, proc = timed_doit(["run", f"target:{TARGET}"], root, env)
        if proc.returncode != 0:
            raise failure(f"{what}: cold `doit run target:{TARGET}`", proc)
        ran = [t for t in executed_tasks(proc.stdout) if t.startswith("execute:")]
        if len(ran) != lanes:
            raise failure(f"{what}: cold run executed {len(ran)} of {lanes} lanes", proc)
        result.cold_s.append(elapsed)
        trips = take_round_trips(calls)
        result.cold_trips.append(len(trips))
        result.cold_kinds = kinds(trips)

        elapsed, proc = timed_doit(["run", f"target:{TARGET}"], root, env)
        if proc.returncode != 0:
            raise failure(f"{what}: no-op `doit run target:{TARGET}`", proc)
        if executed_tasks(proc.stdout):
            raise failure(f"{what}: the no-op rerun executed tasks", proc)
        result.noop_s.append(elapsed)
        trips = take_round_trips(calls)
        result.noop_trips.append(len(trips))
        result.noop_kinds = kinds(trips)
    return result


def marginal_trips(results: Sequence[LaneResult]) -> Dict[str, Dict[str, float]]:
    """Per payload mode, the round trips each lane adds: the slope between the smallest and the
    largest lane count (fixed costs such as connecting and building cancel out)."""
    slopes: Dict[str, Dict[str, float]] = {}
    for mode in MODES:
        measured = sorted((r for r in results if r.mode == mode), key=lambda r: r.lanes)
        if len(measured) < 2 or measured[0].lanes == measured[-1].lanes:
            continue
        low, high = measured[0], measured[-1]
        extra = high.lanes - low.lanes
        slopes[mode] = {
            "cold": round(
                (statistics.median(high.cold_trips) - statistics.median(low.cold_trips)) / extra, 3
            ),
            "noop": round(
                (statistics.median(high.noop_trips) - statistics.median(low.noop_trips)) / extra, 3
            ),
        }
    return slopes


# -- upload throughput ------------------------------------------------------------------------


@dataclass
class Tree:
    files: int
    bytes: int
    large_files: int


def make_tree(root: Path, files: int, mib: int) -> Tree:
    """`files` files of incompressible bytes, ~`mib` MiB in all: a share in 1 MiB files, the rest
    in small files of random sizes, FILES_PER_DIR per directory."""
    rng = random.Random(20260102)  # the same tree on every run
    total = mib * MIB
    large = min(files // 2, int(total * LARGE_SHARE) // LARGE_FILE)
    small = files - large
    small_total = max(total - large * LARGE_FILE, small)
    cuts = sorted(rng.sample(range(1, small_total), small - 1)) if small > 1 else []
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, small_total])] if small else []
    sizes += [LARGE_FILE] * large
    rng.shuffle(sizes)
    written = 0
    for i, size in enumerate(sizes):
        directory = root / f"d{i // FILES_PER_DIR:03}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:05}.bin").write_bytes(rng.randbytes(size))
        written += size
    return Tree(files=len(sizes), bytes=written, large_files=large)


def tree_size(root: Path) -> Tuple[int, int]:
    """(files, bytes) under `root`, to check that an upload arrived whole."""
    count = total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            count += 1
            total += (Path(dirpath) / name).lstat().st_size
    return count, total


def ssh_argv(server: Sshd, transport: Transport) -> List[str]:
    """ssh as a mux client of the transport's master: the baselines share its connection."""
    return [
        "ssh",
        "-F",
        str(server.ssh_config),
        "-o",
        f"ControlPath={transport.control_path}",
        "-o",
        "BatchMode=yes",
    ]


def run_checked(argv: Sequence[str], what: str) -> None:
    proc = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"{what} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")


def upload_pikaci(transport: Transport, work: Path, snapshot: Path, tree_id: str) -> Path:
    layout = RemoteLayout(str(work))
    published = publish_snapshot(transport, layout, snapshot, tree_id, lambda _line: None)
    if not published.uploaded:
        raise BenchError(f"publish_snapshot into the fresh {work} did not upload")
    return Path(published.remote_path)


def upload_rsync(server: Sshd, transport: Transport, work: Path, snapshot: Path) -> Path:
    dest = work / "rsync"
    shell = shlex.join(ssh_argv(server, transport))
    run_checked(["rsync", "-a", "-e", shell, f"{snapshot}/", f"{server.host}:{dest}/"], "rsync")
    return dest


def upload_tar(server: Sshd, transport: Transport, work: Path, snapshot: Path) -> Path:
    dest = work / "tar"
    remote = f"mkdir {shlex.quote(str(dest))} && tar -C {shlex.quote(str(dest))} -xpf -"
    tar = subprocess.Popen(
        ["tar", "-C", str(snapshot), "-cf", "-", "."],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    ssh = subprocess.run(
        [*ssh_argv(server, transport), server.host, remote],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    tar.stdout.close()
    if tar.wait() != 0 or ssh.returncode != 0:
        raise BenchError(f"tar | ssh tar failed: {ssh.stderr.strip()[-500:]}")
    return dest


@dataclass
class UploadResult:
    files: int  # the snapshot's, its metadata file included
    bytes: int
    large_files: int
    seconds: Dict[str, List[float]]

    def median(self, method: str) -> float:
        return statistics.median(self.seconds[method])

    def mib_per_s(self, seconds: float) -> float:
        return self.bytes / MIB / seconds

    def vs(self, baseline: str) -> float:
        """pikaci's throughput over the baseline's: above 1 means pikaci is faster."""
        return self.median(baseline) / self.median("pikaci")

    def best_vs(self, baseline: str) -> float:
        """The same from the fastest samples: the least disturbed on a busy machine."""
        return min(self.seconds[baseline]) / min(self.seconds["pikaci"])

    def to_dict(self) -> Dict[str, object]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "large_files": self.large_files,
            "methods": {
                method: {
                    **summary(samples),
                    "mib_per_s_median": round(self.mib_per_s(self.median(method)), 2),
                    "mib_per_s_best": round(self.mib_per_s(min(samples)), 2),
                }
                for method, samples in self.seconds.items()
            },
            "pikaci_vs_rsync": round(self.vs("rsync"), 3),
            "pikaci_vs_tar_ssh": round(self.vs("tar_ssh"), 3),
            "pikaci_vs_rsync_best": round(self.best_vs("rsync"), 3),
            "pikaci_vs_tar_ssh_best": round(self.best_vs("tar_ssh"), 3),
        }


def measure_upload(server: Sshd, repeat: int, files: int, mib: int, tmp: Path) -> UploadResult:
    tree = make_tree(tmp / "tree", files, mib)
    meta = create_snapshot(tmp / "tree", tmp / "snapshots", SnapshotFilter())
    assert meta.tree_id is not None
    snapshot = Path(meta.snapshot_dir)
    expected = tree_size(snapshot)  # the tree plus the snapshot's metadata file
    result = UploadResult(
        files=expected[0],
        bytes=expected[1],
        large_files=tree.large_files,
        seconds={"pikaci": [], "rsync": [], "tar_ssh": []},
    )
    builder = Builder(host=server.host, ssh_config=server.ssh_config)
    with Transport(builder, server.control_dir(), lambda _line: None) as transport:
        transport.run("warm up", "true")  # the master is up: samples exclude connecting
        for _ in range(repeat):
            # interleaved, so that drift hits all three alike
            for method, samples in result.seconds.items():
                work = server.work_dir()
                os.sync()  # the last sample's writeback must not slow this one down
                start = time.perf_counter()
                if method == "pikaci":
                    dest = upload_pikaci(transport, work, snapshot, meta.tree_id)
                elif method == "rsync":
                    dest = upload_rsync(server, transport, work, snapshot)
                else:
                    dest = upload_tar(server, transport, work, snapshot)
                samples.append(time.perf_counter() - start)
                arrived = tree_size(dest)
                if arrived != expected:
                    raise BenchError(f"{method}: {arrived} (files, bytes) arrived, not {expected}")
                shutil.rmtree(work)  # as root: the login user's files go too
    return result


# -- reporting --------------------------------------------------------------------------------


def tool_version(argv: Sequence[str]) -> Optional[str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except OSError:
        return None
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0] if lines else None


def format_report(lane_results: Sequence[LaneResult], upload: UploadResult) -> str:
    header = (
        f"{'lanes':>5} {'mode':>7} {'cold trips':>10} {'/lane':>6} {'no-op trips':>11} "
        f"{'/lane':>6} {'cold med s':>10} {'cold min s':>10} {'no-op med s':>11} "
        f"{'no-op min s':>11}"
    )
    rows = [header, "-" * len(header)]
    for r in lane_results:
        rows.append(
            f"{r.lanes:>5} {r.mode:>7} {statistics.median(r.cold_trips):>10g} "
            f"{r.per_lane(r.cold_trips):>6.2f} {statistics.median(r.noop_trips):>11g} "
            f"{r.per_lane(r.noop_trips):>6.2f} {statistics.median(r.cold_s):>10.3f} "
            f"{min(r.cold_s):>10.3f} {statistics.median(r.noop_s):>11.3f} {min(r.noop_s):>11.3f}"
        )
    for mode, slope in marginal_trips(lane_results).items():
        rows.append(
            f"{mode}: each extra lane adds {slope['cold']:g} round trip(s) cold, "
            f"{slope['noop']:g} on a no-op rerun"
        )
    rows += [
        "",
        f"upload of {upload.files} files, {upload.bytes / MIB:.1f} MiB "
        "(warm connection, fresh remote dir per sample)",
        f"{'method':>8} {'med s':>7} {'min s':>7} {'MiB/s med':>9} {'MiB/s best':>10}",
    ]
    for method, samples in upload.seconds.items():
        rows.append(
            f"{method:>8} {upload.median(method):>7.3f} {min(samples):>7.3f} "
            f"{upload.mib_per_s(upload.median(method)):>9.1f} "
            f"{upload.mib_per_s(min(samples)):>10.1f}"
        )
    rows.append(
        f"pikaci/rsync throughput {upload.vs('rsync'):.2f}x median, "
        f"{upload.best_vs('rsync'):.2f}x best; pikaci/tar_ssh {upload.vs('tar_ssh'):.2f}x "
        f"median, {upload.best_vs('tar_ssh'):.2f}x best"
    )
    return "\n".join(rows)


# -- command line -----------------------------------------------------------------------------


def preflight() -> Iterator[str]:
    """What is missing to run this benchmark here."""
    if os.geteuid() != 0:
        yield "run as root: the loopback sshd creates the login user pikaci-remote"
    for tool in ("rsync", "nix", "bwrap", "tar"):
        if shutil.which(tool) is None:
            yield f"{tool} is not installed"
    if not BUSYBOX.is_file():
        yield f"{BUSYBOX} is missing (apt-get install busybox-static)"


def measure_all(
    server: Sshd, lane_counts: Sequence[int], repeat: int, files: int, mib: int
) -> Tuple[List[LaneResult], UploadResult]:
    lane_results: List[LaneResult] = []
    with tempfile.TemporaryDirectory(prefix="pikaci-bench-remote-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            for lanes in lane_counts:
                for mode in MODES:
                    print(f"measuring {lanes} lane(s), {mode} payloads ...", file=sys.stderr)
                    lane_results.append(measure_lanes(server, lanes, mode, repeat, tmp))
            print(f"measuring uploads of {mib} MiB ...", file=sys.stderr)
            upload = measure_upload(server, repeat, files, mib, tmp)
        finally:
            close_run_master(server)  # before sshd stops: the master is its client
    return lane_results, upload


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lanes", type=parse_lanes, default=[1, 5], help="e.g. 1,5")
    parser.add_argument("--repeat", type=positive_int, default=5, help="samples per figure")
    parser.add_argument("--files", type=positive_int, default=2000, help="files in the tree")
    parser.add_argument("--mib", type=positive_int, default=64, help="size of the tree")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    args = parser.parse_args(argv)
    lane_counts: List[int] = args.lanes
    repeat: int = args.repeat

    missing = list(preflight())
    if missing:
        print("remote_upload: " + "; ".join(missing), file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        with running_sshd() as server:
            lane_results, upload = measure_all(server, lane_counts, repeat, args.files, args.mib)
    except (BenchError, RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"remote_upload: measurement failed: {exc}", file=sys.stderr)
        return 2

    report = {
        "benchmark": "remote_upload",
        "created_at": utc_now(),
        "source": source_revision(),
        "machine": machine(),
        "doit_version": metadata.version("doit"),
        "nix": tool_version(["nix", "--version"]),
        "openssh": tool_version(["ssh", "-V"]),
        "rsync": tool_version(["rsync", "--version"]),
        "repeat": repeat,
        "elapsed_s": round(time.monotonic() - started, 1),
        "round_trips": [r.to_dict() for r in lane_results],
        "round_trips_per_extra_lane": marginal_trips(lane_results),
        "upload": upload.to_dict(),
    }
    output: Path = args.output
    write_json(output, report)
    print(
        f"remote placement on a loopback builder (python {platform.python_version()}, "
        f"{nproc()} cpu(s), repeat {repeat}); trips are ssh invocations reaching the builder"
    )
    print(format_report(lane_results, upload))
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
