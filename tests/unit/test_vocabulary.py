"""pikaci.vocabulary: every lane's recorded execution is in the reference's value sets, the
checks name the field at fault, and docs/records.md lists the sets the code enforces."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from pikaci import vocabulary
from pikaci.catalog import SUPPORTED_EXECUTIONS, Execution
from pikaci.vocabulary import record_violations, recorded_execution, shown_runtime
from tests.fixtures.support import REPO_ROOT
from tests.fixtures.vocabulary import violations_under


def test_every_supported_execution_is_recorded_in_the_reference_vocabulary() -> None:
    for placement, runtime in SUPPORTED_EXECUTIONS:
        recorded = recorded_execution(Execution(placement, runtime))
        assert recorded.executor in vocabulary.EXECUTORS, (placement, runtime)
        assert recorded.placement == placement and recorded.runtime in vocabulary.RUNTIMES
        # nothing is lost: pikaci's runtime is the recorded one or the sandbox beside it
        assert shown_runtime(recorded.runtime, recorded.sandbox) == runtime
    sandbox = recorded_execution(Execution("remote_ssh", "bubblewrap"))
    assert (sandbox.executor, sandbox.runtime, sandbox.sandbox) == (
        "remote_ssh_host_process",
        "host_process",
        "bubblewrap",
    )


def test_the_values_of_earlier_pikaci_records_are_named_field_by_field() -> None:
    job = {"status": "passed", "executor": "local_sandbox", "placement": "local",
           "runtime": "bubblewrap"}  # fmt: skip
    assert record_violations("run.json", {"status": "passed", "jobs": [job]}) == [
        "run.json.jobs[0].executor: 'local_sandbox' is not one of "
        + ", ".join(vocabulary.EXECUTORS),
        "run.json.jobs[0].runtime: 'bubblewrap' is not one of host_process, incus, tart",
    ]
    plan = {"nodes": [{"kind": "prepare", "executor": "host_local", "placement": "local",
                       "runtime": "host_process", "prepare": {"type": "workspace_snapshot"}}]}  # fmt: skip
    (problem,) = record_violations("plan.json", plan)
    assert problem.startswith("plan.json.nodes[0].prepare.type: 'workspace_snapshot'")
    outputs = {"outputs": [{"protocol": "nix_store_path_v1", "residency": "local_authoritative",
                            "consumer": "builder_bind_mounts_v1"}]}  # fmt: skip
    (problem,) = record_violations("prepared-outputs.json", outputs)
    assert problem.startswith("prepared-outputs.json.outputs[0].consumer: 'builder_bind_mounts_v1'")
    assert record_violations(
        "status.json", {**job, "runtime": "incus", "executor": "host_local", "sandbox": "chroot"}
    ) == ["status.json.sandbox: 'chroot' is not one of bubblewrap"]
    event = {"event": "job_exploded", "job": {**job, "executor": "host_local",
                                              "runtime": "host_process"}}  # fmt: skip
    assert vocabulary.event_violations(event) == [
        "event: 'job_exploded' is not one of " + ", ".join(vocabulary.EVENTS)
    ]


def test_the_suites_check_reads_the_records_of_a_state_root(tmp_path: Path) -> None:
    job_dir = tmp_path / "runs" / "r1" / "jobs" / "a"
    job_dir.mkdir(parents=True)
    (job_dir / "status.json").write_bytes(orjson.dumps({"status": "exploded"}))
    (tmp_path / "runs" / "r1" / "run.json").write_bytes(orjson.dumps({"status": "passed"}))
    (tmp_path / "runs" / "r1" / "plan.json").write_text("{not json")  # corrupt: not its business
    (job_dir / "artifacts").mkdir()
    (job_dir / "artifacts" / "status.json").write_text('{"status": "guest-side"}')  # not a record
    problems = violations_under(tmp_path)
    assert len(problems) == 4 and all(p.startswith(str(job_dir / "status.json")) for p in problems)


def test_records_md_lists_the_value_sets_the_code_enforces() -> None:
    doc = (REPO_ROOT / "docs" / "records.md").read_text()
    table = doc.split("## Enum values", 1)[1].split("\n\n", 3)[2]
    listed = set(re.findall(r"`([a-z_0-9]+)`", table))
    enforced = {
        *vocabulary.RUN_STATUSES, *vocabulary.EXECUTORS, *vocabulary.PLACEMENTS,
        *vocabulary.RUNTIMES, *vocabulary.NODE_KINDS, *vocabulary.PREPARE_TYPES,
        *vocabulary.EXECUTE_TYPES, *vocabulary.PROTOCOLS, *vocabulary.RESIDENCIES,
        *vocabulary.CONSUMERS, *vocabulary.EXPOSURE_KINDS, *vocabulary.EXPOSURE_ACCESS,
        *vocabulary.VM_BACKENDS, *vocabulary.EVENTS,
    }  # fmt: skip
    assert enforced - listed == set()
