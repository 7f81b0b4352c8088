"""The `fulfill_request_cli_v1` consumer (reference §3.4-3.5) in real runs: a staged sandbox lane
whose payload links are made by the fulfillment helper, invoked directly, through the launcher,
or through a command transport; the request, launch, transport and result files; the record
fields; failures that fail the lane; settings refused with one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict

import orjson
import pytest

from tests.fixtures.projects import LaneSpec

BUILD_ROOT = "/staged/linux-rust/workspace-build"
CHECK = f"test -x {BUILD_ROOT}/bin/run-check && echo payload-here"
FULFILL = {"PIKACI_PREPARED_OUTPUT_CONSUMER": "fulfill_request_cli_v1"}
BIN = Path(sys.executable).parent


@pytest.fixture
def staged(make_staged_project):
    lane = LaneSpec("check", f"{BUILD_ROOT}/bin/run-check", runtime="bubblewrap")
    return make_staged_project({"run-check": CHECK}, {"main": [lane]})


def outputs_of(project, run_id: str) -> Dict[str, Dict[str, object]]:
    path = project.state_root / "runs" / run_id / "prepared-outputs.json"
    return {o["node_id"]: o for o in orjson.loads(path.read_bytes())["outputs"]}


def test_the_helper_makes_the_payload_links(staged) -> None:
    project = staged
    done = project.doit("run", "lane:check", env=FULFILL)
    assert done.returncode == 0, done.stdout + done.stderr
    record = project.latest_run()
    run_id = str(record["run_id"])
    assert record["prepared_output_consumer"] == "fulfill_request_cli_v1"
    assert record["prepared_output_invocation_mode"] == "direct_helper_exec_v1"
    assert record["prepared_output_mode"] is None
    job_dir = project.job_dir(run_id, "check")
    outputs = outputs_of(project, run_id)
    assert set(outputs) == {"prepare-shared-workspace-deps", "prepare-shared-workspace-build"}
    for node, output in outputs.items():
        role = node.rsplit("-", 1)[1]
        link = job_dir / "staged-linux-rust" / f"workspace-{role}"
        assert str(link.readlink()) == output["realized_path"]
        exposure = {"kind": "host_symlink_mount", "path": str(link), "access": "read_only"}
        assert output["consumer"] == "fulfill_request_cli_v1"
        assert output["exposures"] == output["requested_exposures"] == [exposure]
        request = json.loads(Path(str(output["consumer_request_path"])).read_text())
        assert request["realized_path"] == output["realized_path"]
        assert request["requested_exposures"] == [exposure]
        result = json.loads(Path(str(output["consumer_result_path"])).read_text())
        assert result["status"] == "succeeded"
        assert result["request_path"] == output["consumer_request_path"]
        assert output["consumer_launch_request_path"] is None
    host_log = (job_dir / "host.log").read_text()
    assert "fulfill prepare-shared-workspace-build: $ " in host_log
    assert "pikaci-fulfill-prepared-output --result-path" in host_log

    # unchanged: the lane is reused, its exposures requested, no helper runs
    again = project.doit("run", "lane:check", env=FULFILL)
    assert again.returncode == 0, again.stdout + again.stderr
    reused = project.latest_run()
    assert reused["run_id"] != run_id and reused["jobs"][0]["reused_from_run"] == run_id
    for output in outputs_of(project, str(reused["run_id"])).values():
        assert len(output["requested_exposures"]) == 1 and output["exposures"] == []
        assert output["consumer_request_path"] is None

    # a rerun uses the recorded consumer, whatever the environment says now
    rerun = project.pikaci("rerun", run_id)
    assert rerun.returncode == 0, rerun.stderr
    assert project.latest_run()["prepared_output_consumer"] == "fulfill_request_cli_v1"


def test_through_the_launcher_and_a_command_transport(staged, tmp_path) -> None:
    project = staged
    wrapper = {
        **FULFILL,
        "PIKACI_PREPARED_OUTPUT_FULFILL_INVOCATION": "external_wrapper_command_v1",
    }
    done = project.doit("run", "lane:check", env=wrapper)
    assert done.returncode == 0, done.stdout + done.stderr
    record = project.latest_run()
    assert record["prepared_output_launcher_transport_mode"] == "direct_launcher_exec_v1"
    assert record["prepared_output_invocation_wrapper_program"] == str(
        BIN / "pikaci-launch-fulfill-prepared-output"
    )
    output = outputs_of(project, str(record["run_id"]))["prepare-shared-workspace-deps"]
    launch = json.loads(Path(str(output["consumer_launch_request_path"])).read_text())
    assert launch["helper_request_path"] == output["consumer_request_path"]
    assert launch["helper_result_path"] == output["consumer_result_path"]

    # a transport program of the operator's: runs the launcher the transport request names
    transport = tmp_path / "transport"
    calls = tmp_path / "transport-calls"
    transport.write_text(
        f"#!{sys.executable}\n"
        "import json, subprocess, sys\n"
        f"open({str(calls)!r}, 'a').write(sys.argv[1] + '\\n')\n"
        "r = json.load(open(sys.argv[1]))\n"
        "assert r['path_contract'] == 'same_host_absolute_paths_v1', r\n"
        "sys.exit(subprocess.call([r['launcher_program'], r['launcher_request_path']]))\n"
    )
    transport.chmod(0o755)
    command = {
        **wrapper,
        "PIKACI_PREPARED_OUTPUT_FULFILL_LAUNCHER_TRANSPORT": "command_transport_v1",
        "PIKACI_PREPARED_OUTPUT_FULFILL_TRANSPORT_BINARY": str(transport),
    }
    assert project.doit("forget", "--all").returncode == 0
    done = project.doit("run", "lane:check", env=command)
    assert done.returncode == 0, done.stdout + done.stderr
    record = project.latest_run()
    assert record["prepared_output_launcher_transport_program"] == str(transport)
    outputs = outputs_of(project, str(record["run_id"]))
    requests = sorted(str(o["consumer_transport_request_path"]) for o in outputs.values())
    assert sorted(calls.read_text().splitlines()) == requests
    assert all(o["exposures"] for o in outputs.values())


def test_a_failed_fulfillment_fails_the_lane(staged) -> None:
    project = staged
    env = {**FULFILL, "PIKACI_PREPARED_OUTPUT_FULFILL_BINARY": "/bin/false"}
    done = project.doit("run", "lane:check", env=env)
    assert done.returncode != 0
    (job,) = project.latest_run()["jobs"]
    assert job["status"] == "failed"
    assert "fulfillment failed: no result was written (exit 1)" in str(job["message"])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"PIKACI_PREPARED_OUTPUT_CONSUMER": "symlinks"},
            "PIKACI_PREPARED_OUTPUT_CONSUMER: expected",
        ),
        ({**FULFILL, "PIKACI_PREPARED_OUTPUT_FULFILL_INVOCATION": "x"}, "_INVOCATION: expected"),
        (
            {**FULFILL, "PIKACI_PRE_MERGE_PIKA_RUST_SUBPROCESS_FULFILL": "1"},
            "cannot be combined with PIKACI_PREPARED_OUTPUT_CONSUMER",
        ),
        ({"PIKACI_PRE_MERGE_PIKA_RUST_SUBPROCESS_FULFILL": "maybe"}, "expected 1/true/yes"),
        (
            {
                **FULFILL,
                "PIKACI_PREPARED_OUTPUT_FULFILL_INVOCATION": "external_wrapper_command_v1",
                "PIKACI_PREPARED_OUTPUT_FULFILL_LAUNCHER_TRANSPORT": "ssh_launcher_transport_v1",
            },
            "ssh_launcher_transport_v1 is not supported by this version",
        ),
        (
            {
                **FULFILL,
                "PIKACI_PREPARED_OUTPUT_FULFILL_INVOCATION": "external_wrapper_command_v1",
                "PIKACI_PREPARED_OUTPUT_FULFILL_LAUNCHER_TRANSPORT": "command_transport_v1",
            },
            "needs PIKACI_PREPARED_OUTPUT_FULFILL_TRANSPORT_BINARY",
        ),
    ],
)
def test_bad_settings_stop_before_any_run(make_project, env, message) -> None:
    project = make_project([LaneSpec("a", "true")])
    for done in (project.doit("run", "lane:a", env=env), project.pikaci("run", "a", env=env)):
        assert done.returncode != 0
        assert message in done.stdout + done.stderr
    assert project.run_ids() == []


def test_consumers_that_cannot_serve_the_planned_lanes(make_project) -> None:
    project = make_project([LaneSpec("a", "true")])
    forced = {"PIKACI_PRE_MERGE_PIKA_RUST_SUBPROCESS_FULFILL": "yes"}
    done = project.pikaci("run", "a", env=forced)
    assert done.returncode == 1
    assert "needs at least one lane of a staged target" in done.stdout + done.stderr
    assert project.run_ids() == []
    assert (
        project.pikaci(
            "run", "a", env={"PIKACI_PRE_MERGE_PIKA_RUST_SUBPROCESS_FULFILL": "no"}
        ).returncode
        == 0
    )
