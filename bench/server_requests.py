"""Run-bundle server benchmark: `pikaci serve` requests/s next to a static server sending the same
JSON bytes, and the server's memory while it streams a large log.

    python bench/server_requests.py [--runs 200] [--concurrency 8] [--seconds 5] [--log-mib 1024]
                                    [--static python|http.server|nginx] [--quick]
                                    [--output bench/results/server_requests.json]

A state root in a temporary directory gets `--runs` runs of two finished jobs each. `pikaci serve`
(waitress, 8 threads) serves it on 127.0.0.1; the run record and the first list page are fetched
from it once and written to files that a static server serves, so both sides send identical
bodies. The static server is http.server's file handler on HTTP/1.1 (keep-alive) with TCP_NODELAY
(`python`, the default), `python -m http.server --protocol HTTP/1.1` as it comes (`http.server`,
whose small responses stall on Nagle and delayed ACKs) or nginx. C client threads, each with one
keep-alive `http.client` connection, request one endpoint for `--seconds` after a warm-up; only
responses with status 200 and the expected body length count.

Memory (measured first, on the fresh server): one job of the newest run gets a `--log-mib` MiB
host log. The server's peak RSS (VmHWM, reset through /proc/<pid>/clear_refs when allowed) is read
before and after the whole log is streamed through `raw-log`, and again after the last
`--tail-mib` MiB are paged through `tail`. The RSS after the request load is recorded too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import os
import platform
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlencode

import orjson
from noop_rerun import BenchError, machine, nproc, positive_int, source_revision, utc_now

from pikaci.model import JobRecord, PrepareTiming, RunRecord
from pikaci.store import RunWriter, StateRoot, write_json
from pikaci.timestamps import format_timestamp

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "server_requests.json"
HOST = "127.0.0.1"
SLUG = "bench"
MIB = 1 << 20
LOG_BLOCK = 8 * MIB  # the big log is written one block at a time
READ_CHUNK = MIB  # the client reads the streamed log this much at a time
TAIL_LIMIT = MIB  # the tail endpoint's maximum page
LIST_LIMIT = 50
WAITRESS_THREADS = 8  # what `pikaci serve` configures (pikaci/server/serve.py)
NGINX = Path("/usr/sbin/nginx")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
QUICK = {"runs": 30, "seconds": 1, "log_mib": 64, "warmup": 0.5}
DEFAULTS = {"runs": 200, "seconds": 5, "log_mib": 1024, "warmup": 1.0}

# The default static server: http.server's file handler, HTTP/1.1 (keep-alive) and, like waitress,
# TCP_NODELAY. `python -m http.server` leaves Nagle on, and as its handler writes the headers and
# the body in two sends, every small response waits for the client's delayed ACK (~40 ms).
STATIC_SCRIPT = """\
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = sys.argv[2] == "nodelay"
handler = functools.partial(Handler, directory=sys.argv[1])
with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
    print(f"Serving HTTP on 127.0.0.1 port {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()
"""


# -- the state root ---------------------------------------------------------------------------

TARGETS = (
    (
        "linux-rust",
        "the Rust workspace: clippy and the test suite on Linux",
        (
            ("clippy", "cargo clippy over the workspace, warnings denied"),
            ("test", "cargo nextest over the workspace"),
        ),
    ),
    (
        "web",
        "the web client: lint, type check and unit tests",
        (
            ("lint", "eslint and the type checker over the client sources"),
            ("unit", "the client's unit tests in headless Chromium"),
        ),
    ),
    (
        "docs",
        "the documentation site: build and link check",
        (
            ("build", "build the documentation site with warnings as errors"),
            ("links", "check every internal and external link of the built site"),
        ),
    ),
)
CHANGED = ("src/lib.rs", "src/server/api.rs", "web/src/app.ts", "docs/index.md", "Cargo.lock")
CRATES = ("serde", "tokio", "hyper", "regex", "clap", "anyhow", "tracing", "rustls", "bytes")


@dataclass
class BenchState:
    root: StateRoot
    run_ids: List[str]  # oldest first
    log_run: str  # the newest run: its record is the one fetched, its first job has the big log
    log_job: str
    log_path: Path
    log_bytes: int


def hex_id(rng: random.Random, nbytes: int) -> str:
    """Hex like a hash or a commit id, from the seeded generator: every run writes the same root."""
    return f"{rng.getrandbits(8 * nbytes):0{2 * nbytes}x}"


def small_log(job_id: str, status: str) -> str:
    return (
        f"pikaci: job {job_id} starting\n"
        f"\x1b[1m$ ci/run-{job_id}\x1b[0m\n"
        f"   \x1b[32mCompiling\x1b[0m bench-workspace v0.1.0 (/workspace)\n"
        f"    \x1b[32mFinished\x1b[0m `test` profile [unoptimized + debuginfo] in 41.27s\n"
        f"pikaci: job {job_id} {status}\n"
    )


def make_runs(root: StateRoot, count: int, rng: random.Random) -> List[str]:
    """`count` finished runs, two jobs each, ~17 minutes apart; run ids oldest first."""
    base = datetime.datetime(2026, 10, 1, tzinfo=datetime.timezone.utc)
    run_ids: List[str] = []
    for i in range(count):
        target_id, target_description, job_specs = TARGETS[i % len(TARGETS)]
        created = base + datetime.timedelta(minutes=17 * i, seconds=rng.randrange(60))
        run_id = f"{created:%Y%m%dT%H%M%SZ}-{rng.getrandbits(32):08x}"
        run_dir = root.run_dir(run_id)
        failed = rng.random() < 0.15
        snapshot = str(root.snapshots_dir / f"{hex_id(rng, 32)}-{hex_id(rng, 8)}")
        content_hash = hex_id(rng, 32)
        prepare_ms = [rng.randrange(10, 40), rng.randrange(200, 9000), rng.randrange(500, 60000)]
        timings: List[PrepareTiming] = []
        at = created + datetime.timedelta(milliseconds=120)
        for node, ms in zip(("snapshot", "prepare-deps", "prepare-build"), prepare_ms):
            end = at + datetime.timedelta(milliseconds=ms)
            timings.append(
                PrepareTiming(
                    node_id=f"{node}-{target_id}",
                    started_at=format_timestamp(at),
                    finished_at=format_timestamp(end),
                    duration_ms=ms,
                )
            )
            at = end
        jobs: List[JobRecord] = []
        for n, (job_name, job_description) in enumerate(job_specs):
            job_id = f"{target_id}-{job_name}"
            job_status = "failed" if failed and n == 1 else "passed"
            job_dir = root.job_dir(run_id, job_id)
            (job_dir / "artifacts").mkdir(parents=True, exist_ok=True)
            (job_dir / "host.log").write_text(small_log(job_id, job_status))
            (job_dir / "artifacts" / "guest.log").write_text(small_log(job_id, job_status))
            started = at + datetime.timedelta(milliseconds=rng.randrange(5, 50))
            finished = started + datetime.timedelta(milliseconds=rng.randrange(2000, 600000))
            jobs.append(
                JobRecord(
                    id=job_id,
                    description=job_description,
                    status=job_status,
                    executor="local_sandbox",
                    placement="local",
                    runtime="bubblewrap",
                    plan_node_id=f"execute-{job_id}",
                    timeout_secs=1800,
                    host_log_path=str(job_dir / "host.log"),
                    guest_log_path=str(job_dir / "artifacts" / "guest.log"),
                    started_at=format_timestamp(started),
                    finished_at=format_timestamp(finished),
                    exit_code=1 if job_status == "failed" else 0,
                    message="test failed" if job_status == "failed" else "test passed",
                    pre_execution_prepare_duration_ms=sum(prepare_ms),
                    target_id=target_id,
                    identity=hex_id(rng, 32),
                    artifacts_dir=str(job_dir / "artifacts"),
                    snapshot_dir=snapshot,
                    content_hash=content_hash,
                )
            )
        last = max(job.finished_at or "" for job in jobs)
        writer = RunWriter(run_dir)
        writer.create(
            RunRecord(
                run_id=run_id,
                status="failed" if failed else "passed",
                target_id=target_id,
                target_description=target_description,
                source_root="/srv/ci/checkouts/bench",
                snapshot_dir=snapshot,
                git_head=hex_id(rng, 20),
                git_dirty=rng.random() < 0.1,
                created_at=format_timestamp(created),
                finished_at=last,
                plan_path=str(run_dir / "plan.json"),
                changed_files=rng.sample(CHANGED, rng.randrange(0, 4)),
                message="1 of 2 jobs failed" if failed else None,
                prepare_timings=timings,
                content_hash=content_hash,
            )
        )
        writer.commit(jobs)
        run_ids.append(run_id)
    return run_ids


def log_line(rng: random.Random, n: int) -> str:
    """One line of a plausible build and test log, about 100 bytes, some with ANSI colours."""
    crate = rng.choice(CRATES)
    version = f"{rng.randrange(1, 3)}.{rng.randrange(40)}.{rng.randrange(20)}"
    kind = n % 10
    if kind < 3:
        return (
            f"   \x1b[1m\x1b[32mCompiling\x1b[0m {crate} v{version} "
            f"(registry+https://github.com/rust-lang/crates.io-index)\n"
        )
    if kind < 7:
        ms = rng.randrange(1, 900)
        return (
            f"test server::api::tests::{crate}_request_{n % 9973:04d}_round_trips_with_keep_alive"
            f" ... \x1b[32mok\x1b[0m ({ms} ms)\n"
        )
    if kind == 7:
        return (
            f"\x1b[1m\x1b[33mwarning\x1b[0m\x1b[1m: unused variable: `{crate}_handle`\x1b[0m "
            f"--> src/server/{crate}.rs:{rng.randrange(1, 900)}:{rng.randrange(1, 80)}\n"
        )
    if kind == 8:
        return (
            f"2026-11-21T10:{n % 60:02d}:{rng.randrange(60):02d}.{rng.randrange(10**6):06d}Z "
            f"INFO {crate}::pool: connection {rng.randrange(10**6)} returned to the pool ✓\n"
        )
    return (
        f"[{n:>8}] downloading {crate}-{version}.crate "
        f"({rng.randrange(10, 900)} KiB) from the binary cache, {rng.randrange(100)}% done\n"
    )


def log_block(rng: random.Random) -> bytes:
    """Exactly LOG_BLOCK bytes of whole lines (the last one padded)."""
    parts: List[bytes] = []
    size = n = 0
    while True:
        line = log_line(rng, n).encode()
        if size + len(line) > LOG_BLOCK:
            break
        parts.append(line)
        size += len(line)
        n += 1
    left = LOG_BLOCK - size
    if left:
        parts.append(b"." * (left - 1) + b"\n")
    return b"".join(parts)


def write_big_log(path: Path, mib: int, rng: random.Random) -> int:
    """A `mib` MiB log: the same 8 MiB block of lines over and over (memory stays at one block)."""
    block = log_block(rng)
    left = mib * MIB
    with open(path, "wb") as handle:
        while left > 0:
            chunk = block[: min(LOG_BLOCK, left)]
            handle.write(chunk)
            left -= len(chunk)
    return path.stat().st_size


def build_state(path: Path, runs: int, log_mib: int) -> BenchState:
    rng = random.Random(20261121)
    root = StateRoot(path)
    root.runs_dir.mkdir(parents=True)
    run_ids = make_runs(root, runs, rng)
    log_run = run_ids[-1]
    target_id, _, job_specs = TARGETS[(runs - 1) % len(TARGETS)]
    log_job = f"{target_id}-{job_specs[0][0]}"
    log_path = root.job_dir(log_run, log_job) / "host.log"
    size = write_big_log(log_path, log_mib, rng)
    return BenchState(root, run_ids, log_run, log_job, log_path, size)


# -- processes --------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL when it has not exited after STOP_TIMEOUT_S."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return ""


def wait_for_port(proc: subprocess.Popen[bytes], log: Path, pattern: str, what: str) -> int:
    """The port the process reports in its log once it listens."""
    deadline = time.monotonic() + START_TIMEOUT_S
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        match = regex.search(log.read_text(errors="replace")) if log.exists() else None
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise BenchError(f"{what} exited {proc.returncode}:\n{log_tail(log)}")
        time.sleep(0.05)
    raise BenchError(f"{what} did not report its port within {START_TIMEOUT_S:g}s")


def wait_for_connect(proc: subprocess.Popen[bytes], port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited {proc.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not accept connections within {START_TIMEOUT_S:g}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    kind: str  # pikaci, python (http.server) or nginx
    proc: subprocess.Popen[bytes]
    port: int


def start(
    argv: Sequence[str], log: Path, env: Dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )


def start_pikaci(stack: contextlib.ExitStack, state: StateRoot, token: str, tmp: Path) -> Server:
    program = Path(sys.executable).parent / "pikaci"
    if not program.is_file():
        raise BenchError(f"{program} not found: install the project into this venv")
    env = {**os.environ, "PIKACI_SERVER_TOKENS": token}
    env.pop("PIKACI_SERVER_TOKENS_FILE", None)
    log = tmp / "pikaci-serve.log"
    argv = [str(program), "serve", "--host", HOST, "--port", "0", "--repo", f"{SLUG}={state.root}"]
    proc = start(argv, log, env, tmp)
    stack.callback(stop_process, proc)
    port = wait_for_port(proc, log, r"listening on http://[^:]+:(\d+)/", "pikaci serve")
    return Server("pikaci", proc, port)


def http_server_has_protocol() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "http.server", "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    return "--protocol" in proc.stdout


def start_python_static(
    stack: contextlib.ExitStack, directory: Path, tmp: Path, stock: bool
) -> Server:
    """`stock`: `python -m http.server --protocol HTTP/1.1` as it comes (Nagle on); otherwise the
    same handler with TCP_NODELAY (STATIC_SCRIPT)."""
    if stock and http_server_has_protocol():
        argv = [sys.executable, "-u", "-m", "http.server", "--bind", HOST]
        argv += ["--protocol", "HTTP/1.1", "--directory", str(directory), "0"]
    else:  # before 3.11 http.server has no --protocol: the script without TCP_NODELAY
        argv = [sys.executable, "-u", "-c", STATIC_SCRIPT, str(directory)]
        argv.append("nagle" if stock else "nodelay")
    log = tmp / "static-server.log"
    proc = start(argv, log, dict(os.environ), tmp)
    stack.callback(stop_process, proc)
    port = wait_for_port(proc, log, r"Serving HTTP on \S+ port (\d+)", "the static server")
    return Server("http.server" if stock else "python", proc, port)


def nginx_config(directory: Path, work: Path, port: int) -> str:
    """One nginx process (no master, so no user switch and no permission games), in the
    foreground, serving `directory` on HOST:port with keep-alive."""
    temp_paths = "".join(
        f"    {name}_temp_path {work / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "daemon off;\n"
        "master_process off;\n"
        f"pid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'};\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {work / 'access.log'};\n"
        f"{temp_paths}"
        "    types { application/json json; }\n"
        "    default_type application/octet-stream;\n"
        "    keepalive_requests 1000000;\n"
        "    keepalive_timeout 75s;\n"
        "    server {\n"
        f"        listen {HOST}:{port};\n"
        f"        root {directory};\n"
        "    }\n"
        "}\n"
    )


def start_nginx(stack: contextlib.ExitStack, directory: Path, tmp: Path) -> Server:
    if not NGINX.is_file():
        raise BenchError(f"--static nginx: {NGINX} not found")
    work = tmp / "nginx"
    work.mkdir()
    port = free_port()
    config = work / "nginx.conf"
    config.write_text(nginx_config(directory, work, port))
    log = tmp / "nginx.log"
    proc = start([str(NGINX), "-p", str(work), "-c", str(config)], log, dict(os.environ), tmp)
    stack.callback(stop_process, proc)
    wait_for_connect(proc, port, log, "nginx")
    return Server("nginx", proc, port)


# -- /proc ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> List[str]:
    """/proc/<pid>/stat from field 3 (state) on: the command name may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its children (nginx's workers)."""
    pids = [pid]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(stat_fields(int(entry.name))[1]) == pid:
                    pids.append(int(entry.name))
    ticks = 0
    for one in pids:
        with contextlib.suppress(OSError):
            fields = stat_fields(one)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def memory_kib(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB."""
    found: Dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (`5` into clear_refs); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- request load -----------------------------------------------------------------------------


@dataclass
class LoadResult:
    endpoint: str  # run or list
    server: str  # pikaci, python or nginx
    path: str
    body_bytes: int
    seconds: float
    ok: int
    errors: int
    connections: int
    server_cpu_s: float
    client_cpu_s: float

    @property
    def rps(self) -> float:
        return self.ok / self.seconds

    def to_dict(self) -> Dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "server": self.server,
            "path": self.path,
            "body_bytes": self.body_bytes,
            "seconds": round(self.seconds, 3),
            "requests_ok": self.ok,
            "errors": self.errors,
            "connections_opened": self.connections,
            "requests_per_s": round(self.rps, 1),
            "server_cpu_s": round(self.server_cpu_s, 2),
            "client_cpu_s": round(self.client_cpu_s, 2),
            # CPU time per wall second: 1.0 is one core busy the whole time
            "server_cores": round(self.server_cpu_s / self.seconds, 2),
            "client_cores": round(self.client_cpu_s / self.seconds, 2),
        }


def client_worker(
    port: int,
    path: str,
    headers: Dict[str, str],
    expected: int,
    window: Tuple[float, float],
    out: List[Tuple[int, int, int]],
) -> None:
    """Requests over one keep-alive connection until the window closes; counts those completed
    inside the window (warm-up and a request cut by the end are left out)."""
    measure_from, stop_at = window
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    ok = errors = opened = 0
    try:
        while time.perf_counter() < stop_at:
            if conn.sock is None:
                opened += 1  # http.client (re)connects on demand
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                good = response.status == 200 and len(body) == expected
            except (OSError, http.client.HTTPException):
                conn.close()
                good = False
                time.sleep(0.01)
            done = time.perf_counter()
            if measure_from <= done <= stop_at:
                if good:
                    ok += 1
                else:
                    errors += 1
    finally:
        conn.close()
        out.append((ok, errors, opened))


def sleep_until(moment: float) -> None:
    left = moment - time.perf_counter()
    if left > 0:
        time.sleep(left)


def measure_load(
    server: Server,
    endpoint: str,
    path: str,
    headers: Dict[str, str],
    expected: int,
    concurrency: int,
    seconds: float,
    warmup: float,
) -> LoadResult:
    print(
        f"  {endpoint} on {server.kind}: {concurrency} connection(s), {seconds:g}s ...",
        file=sys.stderr,
        flush=True,
    )
    counts: List[Tuple[int, int, int]] = []
    begin = time.perf_counter()
    window = (begin + warmup, begin + warmup + seconds)
    threads = [
        threading.Thread(
            target=client_worker,
            args=(server.port, path, headers, expected, window, counts),
            daemon=True,
        )
        for _ in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    sleep_until(window[0])
    client0, server0 = time.process_time(), cpu_seconds(server.proc.pid)
    sleep_until(window[1])
    client1, server1 = time.process_time(), cpu_seconds(server.proc.pid)
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 5)
    if any(thread.is_alive() for thread in threads) or len(counts) != concurrency:
        raise BenchError(f"{endpoint} on {server.kind}: a client thread did not finish")
    if server.proc.poll() is not None:
        raise BenchError(f"{server.kind} exited {server.proc.returncode} during the load")
    ok, errors, opened = (sum(c[i] for c in counts) for i in range(3))
    if ok == 0:
        raise BenchError(f"{endpoint} on {server.kind}: no good response ({errors} errors)")
    return LoadResult(
        endpoint=endpoint,
        server=server.kind,
        path=path,
        body_bytes=expected,
        seconds=seconds,
        ok=ok,
        errors=errors,
        connections=opened,
        server_cpu_s=server1 - server0,
        client_cpu_s=client1 - client0,
    )


def fetch(port: int, path: str, headers: Dict[str, str]) -> bytes:
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"GET {path} on port {port}: {response.status} {body[:300]!r}")
    return body


# -- memory while streaming a big log ---------------------------------------------------------


class RssSampler:
    """The largest VmRSS seen every 20 ms: a cross-check of VmHWM (and all there is when the
    peak cannot be reset)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_kib = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.max_kib = max(self.max_kib, memory_kib(self.pid)["VmRSS"])
            self.stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def stream_raw_log(port: int, path: str, headers: Dict[str, str], size: int) -> float:
    """Seconds to receive the whole log, read READ_CHUNK at a time and counted."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    received = 0
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"raw-log: {response.status} {response.read(300)!r}")
        length = response.getheader("Content-Length")
        if length != str(size):
            raise BenchError(f"raw-log: Content-Length {length}, the log has {size} bytes")
        while True:
            count = response.readinto(view)
            if not count:
                break
            received += count
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if received != size:
        raise BenchError(f"raw-log: received {received} bytes, the log has {size}")
    return elapsed


def page_tail(
    port: int, base: str, headers: Dict[str, str], start: int, size: int
) -> Tuple[int, float]:
    """(pages, seconds) to page from `start` to the end at TAIL_LIMIT per request."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    offset, pages = start, 0
    try:
        started = time.perf_counter()
        while True:
            conn.request("GET", f"{base}&offset={offset}&limit={TAIL_LIMIT}", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise BenchError(f"tail at {offset}: {response.status} {body[:300]!r}")
            chunk = orjson.loads(body)
            pages += 1
            following = int(chunk["next_offset"])
            if chunk["eof"]:
                offset = following
                break
            if following <= offset:
                raise BenchError(f"tail at {offset}: next_offset {following} does not advance")
            offset = following
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if offset != size:
        raise BenchError(f"tail: ended at offset {offset}, the log has {size} bytes")
    return pages, elapsed


@dataclass
class MemoryResult:
    log_bytes: int
    tail_bytes: int
    hwm_reset: bool  # VmHWM was reset to the current RSS before each phase
    before_kib: Dict[str, int]  # VmRSS and VmHWM before the raw-log phase
    after_raw_kib: Dict[str, int]  # ... after it
    after_tail_kib: Dict[str, int]  # ... after the tail phase
    sampled_max_rss_kib: int
    raw_log_s: float
    raw_log_cpu_s: float
    tail_pages: int
    tail_s: float
    tail_cpu_s: float

    @property
    def rss_before_mib(self) -> float:
        return self.before_kib["VmRSS"] / 1024

    @property
    def peak_mib(self) -> float:
        """The peak RSS over both phases (VmHWM is never below the RSS of the reset)."""
        return max(self.after_raw_kib["VmHWM"], self.after_tail_kib["VmHWM"]) / 1024

    @property
    def growth_mib(self) -> float:
        """The peak over the RSS before; only meaningful with `hwm_reset`, otherwise the peak
        may predate the streaming."""
        return self.peak_mib - self.rss_before_mib

    def raw_log_mib_per_s(self) -> float:
        return self.log_bytes / MIB / self.raw_log_s

    def tail_mib_per_s(self) -> float:
        return self.tail_bytes / MIB / self.tail_s

    def to_dict(self) -> Dict[str, object]:
        def mib(kib: int) -> float:
            return round(kib / 1024, 1)

        return {
            "log_bytes": self.log_bytes,
            "hwm_reset": self.hwm_reset,
            "rss_before_mib": mib(self.before_kib["VmRSS"]),
            "hwm_before_mib": mib(self.before_kib["VmHWM"]),
            "raw_log_hwm_mib": mib(self.after_raw_kib["VmHWM"]),
            "rss_after_raw_log_mib": mib(self.after_raw_kib["VmRSS"]),
            "tail_hwm_mib": mib(self.after_tail_kib["VmHWM"]),
            "rss_after_tail_mib": mib(self.after_tail_kib["VmRSS"]),
            "peak_mib": round(self.peak_mib, 1),
            "growth_mib": round(self.growth_mib, 1),
            "sampled_max_rss_mib": mib(self.sampled_max_rss_kib),
            "raw_log_s": round(self.raw_log_s, 3),
            "raw_log_mib_per_s": round(self.raw_log_mib_per_s(), 1),
            "raw_log_server_cpu_s": round(self.raw_log_cpu_s, 2),
            "tail_bytes": self.tail_bytes,
            "tail_pages": self.tail_pages,
            "tail_s": round(self.tail_s, 3),
            "tail_mib_per_s": round(self.tail_mib_per_s(), 1),
            "tail_server_cpu_s": round(self.tail_cpu_s, 2),
        }


def measure_memory(
    server: Server, state: BenchState, headers: Dict[str, str], tail_mib: int
) -> MemoryResult:
    pid = server.proc.pid
    query = urlencode({"job": state.log_job, "kind": "host"})
    api = f"/api/repos/{SLUG}/pikaci"
    size = state.log_bytes
    tail_start = max(0, size - tail_mib * MIB)
    before = memory_kib(pid)
    reset = reset_peak(pid)
    cpu0 = cpu_seconds(pid)
    with RssSampler(pid) as sampler:
        print(f"  raw-log of {size / MIB:.0f} MiB ...", file=sys.stderr, flush=True)
        raw_path = f"{api}/raw-log/{state.log_run}?{query}"
        stream_s = stream_raw_log(server.port, raw_path, headers, size)
        cpu1 = cpu_seconds(pid)
        after_raw = memory_kib(pid)
        reset = reset_peak(pid) and reset
        print(f"  tail from {tail_start / MIB:.0f} MiB ...", file=sys.stderr, flush=True)
        tail_path = f"{api}/tail/{state.log_run}?{query}"
        pages, tail_s = page_tail(server.port, tail_path, headers, tail_start, size)
        cpu2 = cpu_seconds(pid)
        after_tail = memory_kib(pid)
    return MemoryResult(
        log_bytes=size,
        tail_bytes=size - tail_start,
        hwm_reset=reset,
        before_kib=before,
        after_raw_kib=after_raw,
        after_tail_kib=after_tail,
        sampled_max_rss_kib=sampler.max_kib,
        raw_log_s=stream_s,
        raw_log_cpu_s=cpu1 - cpu0,
        tail_pages=pages,
        tail_s=tail_s,
        tail_cpu_s=cpu2 - cpu1,
    )


@dataclass
class Measured:
    load: List[LoadResult]
    memory: MemoryResult
    after_load_kib: Dict[str, int]  # the server's VmRSS and VmHWM once all load has run
    static_server: str
    log_run: str
    log_job: str


# -- reporting --------------------------------------------------------------------------------


def pair(results: Sequence[LoadResult], endpoint: str) -> Tuple[LoadResult, LoadResult]:
    """(pikaci, static) for one endpoint."""
    pikaci = next(r for r in results if r.endpoint == endpoint and r.server == "pikaci")
    static = next(r for r in results if r.endpoint == endpoint and r.server != "pikaci")
    return pikaci, static


def ratio(results: Sequence[LoadResult], endpoint: str) -> float:
    """pikaci's requests/s over the static server's."""
    pikaci, static = pair(results, endpoint)
    return pikaci.rps / static.rps


def format_markdown(measured: Measured) -> str:
    results, static_kind = measured.load, measured.static_server
    rows = [
        f"| endpoint | body bytes | pikaci req/s | static ({static_kind}) req/s | pikaci/static |",
        "|---|---:|---:|---:|---:|",
    ]
    for endpoint in ("run", "list"):
        pikaci, static = pair(results, endpoint)
        rows.append(
            f"| {endpoint} | {pikaci.body_bytes} | {pikaci.rps:.1f} | {static.rps:.1f} "
            f"| {pikaci.rps / static.rps:.3f} |"
        )
    rows += [
        "",
        "| measurement | requests | errors | connections | server cores | client cores |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.endpoint} on {r.server} | {r.ok} | {r.errors} | {r.connections} "
            f"| {r.server_cpu_s / r.seconds:.2f} | {r.client_cpu_s / r.seconds:.2f} |"
        )
    m = measured.memory
    rows += [
        "",
        "| log MiB | RSS before MiB | peak MiB (raw-log / tail) | growth MiB | raw-log s "
        "| raw-log MiB/s | tail pages | tail s | tail MiB/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {m.log_bytes / MIB:.0f} | {m.rss_before_mib:.1f} "
        f"| {m.after_raw_kib['VmHWM'] / 1024:.1f} / {m.after_tail_kib['VmHWM'] / 1024:.1f} "
        f"| {m.growth_mib:.1f} | {m.raw_log_s:.2f} | {m.raw_log_mib_per_s():.0f} "
        f"| {m.tail_pages} | {m.tail_s:.2f} | {m.tail_mib_per_s():.0f} |",
    ]
    if not m.hwm_reset:
        rows.append("(VmHWM could not be reset: the peak may predate the streaming)")
    rows.append(
        f"\nserver RSS after the request load: {measured.after_load_kib['VmRSS'] / 1024:.1f} MiB"
    )
    return "\n".join(rows)


# -- command line -----------------------------------------------------------------------------


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def terminate(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up like Ctrl-C


def run_benchmark(args: argparse.Namespace) -> Measured:
    runs, seconds, warmup = int(args.runs), float(args.seconds), float(args.warmup)
    token = f"bench-{secrets.token_hex(16)}"
    headers = {"Authorization": f"Bearer {token}"}
    api = f"/api/repos/{SLUG}/pikaci"
    with contextlib.ExitStack() as stack:
        # entered first, so it is removed last: after both servers have stopped
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pikaci-bench-server-")))
        print(
            f"writing {runs} runs and a {args.log_mib} MiB log under {tmp} ...",
            file=sys.stderr,
            flush=True,
        )
        state = build_state(tmp / "state", runs, args.log_mib)
        pikaci = start_pikaci(stack, state.root, token, tmp)

        run_path = f"{api}/run/{state.log_run}"
        list_path = f"{api}/runs?limit={LIST_LIMIT}"
        static_dir = tmp / "static"
        static_dir.mkdir()
        run_body = fetch(pikaci.port, run_path, headers)
        list_body = fetch(pikaci.port, list_path, headers)
        listed = orjson.loads(list_body)
        if len(listed["runs"]) != min(LIST_LIMIT, runs) or listed["problems"]:
            raise BenchError(f"the list page is not what was written: {list_body[:300]!r}")
        (static_dir / "run.json").write_bytes(run_body)
        (static_dir / "runs.json").write_bytes(list_body)
        if args.static == "nginx":
            static = start_nginx(stack, static_dir, tmp)
        else:
            static = start_python_static(stack, static_dir, tmp, args.static == "http.server")
        for name, body in (("run.json", run_body), ("runs.json", list_body)):
            if fetch(static.port, f"/{name}", headers) != body:
                raise BenchError(f"the static server does not send the same {name}")

        print("memory while streaming (pikaci):", file=sys.stderr, flush=True)
        memory = measure_memory(pikaci, state, headers, args.tail_mib)

        print("request load:", file=sys.stderr, flush=True)
        load: List[LoadResult] = []
        for endpoint, pikaci_path, static_path, body in (
            ("run", run_path, "/run.json", run_body),
            ("list", list_path, "/runs.json", list_body),
        ):
            for server, path in ((pikaci, pikaci_path), (static, static_path)):
                load.append(
                    measure_load(
                        server,
                        endpoint,
                        path,
                        headers,
                        len(body),
                        args.concurrency,
                        seconds,
                        warmup,
                    )
                )
        after_load = memory_kib(pikaci.proc.pid)
        return Measured(load, memory, after_load, static.kind, state.log_run, state.log_job)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=positive_int, help="runs in the state root (200)")
    parser.add_argument("--concurrency", type=positive_int, default=8, help="client connections")
    parser.add_argument("--seconds", type=positive_int, help="measured seconds per endpoint (5)")
    parser.add_argument("--warmup", type=non_negative_float, help="warm-up seconds (1)")
    parser.add_argument("--log-mib", type=positive_int, help="size of the big host log (1024)")
    parser.add_argument("--tail-mib", type=positive_int, default=64, help="MiB paged by tail")
    parser.add_argument(
        "--static",
        choices=("python", "http.server", "nginx"),
        default="python",
        help="python: http.server's handler with TCP_NODELAY (default); http.server: "
        "`python -m http.server` as it comes; nginx: /usr/sbin/nginx",
    )
    parser.add_argument("--quick", action="store_true", help="runs 30, 1 s, 64 MiB log")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    args = parser.parse_args(argv)
    chosen = QUICK if args.quick else DEFAULTS
    for name, value in chosen.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    params: Dict[str, object] = {
        "runs": args.runs,
        "jobs_per_run": 2,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "log_mib": args.log_mib,
        "tail_mib": args.tail_mib,
        "tail_limit": TAIL_LIMIT,
        "list_limit": LIST_LIMIT,
        "read_chunk": READ_CHUNK,
        "static": args.static,
        "client": "python http.client, one thread per connection",
        "quick": args.quick,
        "waitress_threads": WAITRESS_THREADS,
        # glibc malloc tuning handed down to the servers, if any (MALLOC_ARENA_MAX ...)
        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
    }

    previous = signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    try:
        measured = run_benchmark(args)
    except (BenchError, subprocess.SubprocessError, OSError, KeyError, ValueError) as exc:
        print(f"server_requests: measurement failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("server_requests: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)

    load, memory = measured.load, measured.memory
    report = {
        "benchmark": "server_requests",
        "created_at": utc_now(),
        "source": source_revision(),
        "machine": machine(),
        "waitress_version": metadata.version("waitress"),
        "bottle_version": metadata.version("bottle"),
        "parameters": params,
        "elapsed_s": round(time.monotonic() - started, 1),
        "load": [r.to_dict() for r in load],
        "pikaci_vs_static": {
            "run": round(ratio(load, "run"), 4),
            "list": round(ratio(load, "list"), 4),
        },
        "memory": {
            **memory.to_dict(),
            # all 8 waitress threads have served by now (glibc keeps an arena per thread)
            "rss_after_load_mib": round(measured.after_load_kib["VmRSS"] / 1024, 1),
            "hwm_after_load_mib": round(measured.after_load_kib["VmHWM"] / 1024, 1),
        },
        "log_run": measured.log_run,
        "log_job": measured.log_job,
    }
    output: Path = args.output
    write_json(output, report)
    print(
        f"pikaci serve vs a static server ({measured.static_server}) on 127.0.0.1 (python "
        f"{platform.python_version()}, {nproc()} cpu(s), {args.runs} runs, {args.concurrency} "
        f"keep-alive connections, {args.seconds}s per endpoint)\n"
    )
    print(format_markdown(measured))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
