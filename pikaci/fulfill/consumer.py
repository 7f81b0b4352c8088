"""A run's side of the fulfillment protocol (reference §3.5) for payloads realized here.

For a realized output and the exposures its consuming jobs request, the run writes

    runs/<run>/prepared-output-requests/<node>.json            the helper's request
    runs/<run>/prepared-output-launch-requests/<node>.json     (external wrapper) the launcher's
    runs/<run>/prepared-output-transport-requests/<node>.json  (command transport)

invokes the helper directly, the launcher, or the transport program with the matching file,
then reads `runs/<run>/prepared-output-results/<node>.json` and accepts it only when it
answers this request: schema 1, `succeeded`, the same request path, node, output and store
path, and exactly the requested exposures. Anything else fails the job that asked, with the
helper's own error when it gave one.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import orjson

from pikaci.fulfill.settings import INVOKE_HELPER, TRANSPORT_COMMAND, FulfillSettings
from pikaci.model import Exposure
from pikaci.payloads.staged import StagedOutput
from pikaci.store import write_json

SCHEMA_VERSION = 1
PATH_CONTRACT_SAME_HOST = "same_host_absolute_paths_v1"
FULFILL_TIMEOUT_SECS = 600
REQUESTS_DIR = "prepared-output-requests"
RESULTS_DIR = "prepared-output-results"
LAUNCH_REQUESTS_DIR = "prepared-output-launch-requests"
TRANSPORT_REQUESTS_DIR = "prepared-output-transport-requests"


class FulfillmentError(Exception):
    """The consumer did not expose the output as requested; one line for the job's message."""


@dataclass(frozen=True)
class Fulfilled:
    request_path: str
    result_path: str
    launch_request_path: Optional[str]
    transport_request_path: Optional[str]
    exposures: List[Exposure]


def fulfil(
    settings: FulfillSettings,
    run_dir: Path,
    output: StagedOutput,
    requested: Sequence[Exposure],
    log: Callable[[str], None],
) -> Fulfilled:
    node = output.node_id
    request = run_dir / REQUESTS_DIR / f"{node}.json"
    result = run_dir / RESULTS_DIR / f"{node}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)  # an earlier answer must never pass for this one
    wanted = [exposure.to_dict() for exposure in requested]
    write_json(
        request,
        {
            "schema_version": SCHEMA_VERSION,
            "node_id": node,
            "installable": output.installable,
            "output_name": output.output_name,
            "protocol": "nix_store_path_v1",
            "residency": output.residency,
            "realized_path": str(output.store_path),
            "requested_exposures": wanted,
        },
    )
    launch: Optional[Path] = None
    transport: Optional[Path] = None
    assert settings.helper_program is not None
    argv = [settings.helper_program, "--result-path", str(result), str(request)]
    if settings.invocation != INVOKE_HELPER:
        assert settings.launcher_program is not None
        launch = run_dir / LAUNCH_REQUESTS_DIR / f"{node}.json"
        write_json(
            launch,
            {
                "schema_version": SCHEMA_VERSION,
                "helper_program": settings.helper_program,
                "helper_request_path": str(request),
                "helper_result_path": str(result),
                "node_id": node,
                "output_name": output.output_name,
            },
        )
        argv = [settings.launcher_program, str(launch)]
        if settings.transport == TRANSPORT_COMMAND:
            assert settings.transport_program is not None
            transport = run_dir / TRANSPORT_REQUESTS_DIR / f"{node}.json"
            write_json(transport, _transport_request(settings, run_dir, launch, output))
            argv = [settings.transport_program, str(transport)]
    log(f"fulfill {node}: $ {' '.join(argv)}")
    code = _invoke(argv, log)
    answer = _read_result(result)
    problem = _check(answer, code, request, output, wanted)
    if problem is not None:
        raise FulfillmentError(f"prepared-output `{node}` fulfillment failed: {problem}")
    log(f"fulfill {node}: {len(wanted)} exposure(s) of {output.store_path}")
    return Fulfilled(
        str(request),
        str(result),
        str(launch) if launch else None,
        str(transport) if transport else None,
        [Exposure.from_dict(item, "result") for item in answer["fulfilled_exposures"]],
    )


def _transport_request(
    settings: FulfillSettings, run_dir: Path, launch: Path, output: StagedOutput
) -> Dict[str, Any]:
    """Same host: the transport program runs `<launcher_program> <launcher_request_path>`."""
    return {
        "schema_version": SCHEMA_VERSION,
        "path_contract": PATH_CONTRACT_SAME_HOST,
        "launcher_program": settings.launcher_program,
        "launcher_request_path": str(launch),
        "local_run_dir": str(run_dir),
        "remote_host": None,
        "remote_work_dir": None,
        "remote_launcher_program": None,
        "remote_helper_program": None,
        "remote_launcher_request_path": None,
        "remote_helper_request_path": None,
        "remote_helper_result_path": None,
        "node_id": output.node_id,
        "output_name": output.output_name,
    }


def _invoke(argv: Sequence[str], log: Callable[[str], None]) -> int:
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=FULFILL_TIMEOUT_SECS,
            check=False,
        )
    except OSError as exc:
        raise FulfillmentError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise FulfillmentError(f"{argv[0]} took longer than {FULFILL_TIMEOUT_SECS}s") from None
    for line in (done.stdout + done.stderr).splitlines():
        log(f"fulfill: {line}")
    return done.returncode


def _read_result(path: Path) -> Dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except orjson.JSONDecodeError:
        return {"error": f"{path} is not JSON"}
    return data if isinstance(data, dict) else {"error": f"{path} is not a JSON object"}


def _check(
    answer: Dict[str, Any],
    code: int,
    request: Path,
    output: StagedOutput,
    wanted: List[Dict[str, Any]],
) -> Optional[str]:
    if not answer:
        return f"no result was written (exit {code})"
    if answer.get("status") != "succeeded" or code != 0:
        return str(answer.get("error") or f"status {answer.get('status')!r}, exit {code}")
    expected = {
        "schema_version": SCHEMA_VERSION,
        "request_path": str(request),
        "node_id": output.node_id,
        "output_name": output.output_name,
        "realized_path": str(output.store_path),
        "fulfilled_exposures_count": len(wanted),
        "fulfilled_exposures": wanted,
    }
    for key, value in expected.items():
        if answer.get(key) != value:
            return f"the result's `{key}` is {answer.get(key)!r}, expected {value!r}"
    return None
