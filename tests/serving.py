"""Server test support: crafted run bundles (ids, records, logs, prepared outputs) and a real
`pikaci serve` process."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from wsgiref.util import setup_testing_defaults

from pikaci.model import Exposure, JobRecord, RealizedPreparedOutputRecord, RunRecord
from pikaci.store import RunWriter, StateRoot


def rid(n: int, second: int = 0) -> str:
    return f"202601{1 + n // 24:02d}T{n % 24:02d}00{second:02d}Z-{n:08x}"


def created(run_id: str) -> str:
    s = run_id[:15]
    return f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:15]}.000000+00:00"


def make_run(
    state: StateRoot,
    run_id: str,
    status: str = "passed",
    target: Optional[str] = "main",
    jobs: Tuple[str, ...] = ("a",),
    job_status: Optional[str] = None,
    prepared: bool = False,
) -> RunWriter:
    writer = RunWriter(state.run_dir(run_id))
    writer.create(
        RunRecord(run_id=run_id, created_at=created(run_id), status=status, target_id=target)
    )
    for job_id in jobs:
        job_dir = state.job_dir(run_id, job_id)
        (job_dir / "artifacts").mkdir(parents=True, exist_ok=True)
        (job_dir / "host.log").write_text(f"host of {job_id}\n")
        (job_dir / "artifacts" / "guest.log").write_text(f"guest of {job_id}\n")
        writer.write_job(JobRecord(id=job_id, status=job_status or status))
    if prepared:
        output = RealizedPreparedOutputRecord(
            node_id="prepare-deps",
            installable="path:/x#ci.deps",
            output_name="out",
            protocol="nix_store_path_v1",
            residency="local_authoritative",
            consumer="host_local_symlink_mounts_v1",
            realized_path="/nix/store/abc-deps",
            exposures=[Exposure(kind="host_symlink_mount", path="/tmp/m", access="read_only")],
        )
        writer.update_prepared_outputs(lambda record: record.upsert(output))
    return writer


PIKACI_SERVE = (sys.executable, "-m", "pikaci.cli.main", "serve")


def start_serve(
    cwd: Path, env: Dict[str, str], args: Sequence[str] = (), command: Sequence[str] = PIKACI_SERVE
) -> Tuple[subprocess.Popen[str], int]:
    """`COMMAND --port 0 ARGS` (`pikaci serve` unless told otherwise) in `cwd`; returns the
    process and the port it bound."""
    process = subprocess.Popen(
        [*command, "--port", "0", *args],
        cwd=cwd,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "listening on http://127.0.0.1:" in line, line
    return process, int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])


def wsgi_request(
    app: Any,
    path: str,
    query: str = "",
    method: str = "GET",
    headers: Optional[Dict[str, str]] = None,
    body: bytes = b"",
) -> Tuple[int, List[Tuple[str, str]], List[bytes]]:
    """One request straight into the WSGI app; PATH_INFO arrives decoded, as a server hands it
    over. Returns the status, the headers and the body's parts as the app yielded them."""
    environ: Dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD=method, PATH_INFO=path, QUERY_STRING=query)
    for name, value in (headers or {}).items():
        environ[
            "CONTENT_TYPE" if name == "Content-Type" else f"HTTP_{name.upper().replace('-', '_')}"
        ] = value
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["wsgi.input"] = io.BytesIO(body)
    seen: Dict[str, Any] = {}

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> None:
        seen["status"] = int(status.split(" ", 1)[0])
        seen["headers"] = list(response_headers)

    parts = list(app(environ, start_response))
    return seen["status"], seen["headers"], parts
