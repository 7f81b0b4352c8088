"""Records, ids, timestamps and lifecycle events of `pikaci.model` (no disk, no subprocesses)."""

from __future__ import annotations

import copy
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict

import orjson
import pytest

from pikaci.events import job_event, run_finished_event, run_started_event
from pikaci.model import (
    RUN_FAILED,
    RUN_PASSED,
    Exposure,
    JobRecord,
    PlanNode,
    PreparedOutputsRecord,
    RealizedPreparedOutputRecord,
    RecordError,
    RunPlanRecord,
    RunRecord,
    TerminalResult,
    dumps_line,
    dumps_pretty,
    loads_object,
)
from pikaci.timestamps import (
    duration_ms,
    format_timestamp,
    is_run_id,
    new_run_id,
    now_timestamp,
    parse_timestamp,
)

UTC = timezone.utc
FORMATTED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")

# reference section 2.3 / 2.4, in serialization order
UPSTREAM_RUN_FIELDS = [
    "run_id",
    "status",
    "rerun_of",
    "target_id",
    "target_description",
    "source_root",
    "snapshot_dir",
    "git_head",
    "git_dirty",
    "created_at",
    "finished_at",
    "plan_path",
    "prepared_outputs_path",
    "prepared_output_consumer",
    "prepared_output_mode",
    "prepared_output_invocation_mode",
    "prepared_output_invocation_wrapper_program",
    "prepared_output_launcher_transport_mode",
    "prepared_output_launcher_transport_program",
    "prepared_output_launcher_transport_host",
    "prepared_output_launcher_transport_remote_launcher_program",
    "prepared_output_launcher_transport_remote_helper_program",
    "prepared_output_launcher_transport_remote_work_dir",
    "changed_files",
    "filters",
    "message",
    "prepare_timings",
    "jobs",
]
UPSTREAM_JOB_FIELDS = [
    "id",
    "description",
    "status",
    "executor",
    "placement",
    "runtime",
    "plan_node_id",
    "timeout_secs",
    "host_log_path",
    "guest_log_path",
    "started_at",
    "finished_at",
    "exit_code",
    "message",
    "pre_execution_prepare_duration_ms",
    "remote_linux_vm_execution",
]

RUN_ID = "20260310T223310Z-e53c83eb"

# A run.json as upstream writes it: chrono's nanosecond timestamps, a remote VM job with phases.
UPSTREAM_RUN_JSON = b"""{
  "run_id": "20260310T223310Z-e53c83eb",
  "status": "failed",
  "rerun_of": null,
  "target_id": "pre-merge-pika-rust",
  "target_description": "Run the Rust pre-merge lanes",
  "source_root": "/home/ci/pika",
  "snapshot_dir": "/home/ci/pika/.pikaci/runs/20260310T223310Z-e53c83eb/snapshot",
  "git_head": "0123456789abcdef0123456789abcdef01234567",
  "git_dirty": false,
  "created_at": "2026-03-10T22:33:10.123456789+00:00",
  "finished_at": "2026-03-10T22:41:02.987654321+00:00",
  "plan_path": "/home/ci/pika/.pikaci/runs/20260310T223310Z-e53c83eb/plan.json",
  "prepared_outputs_path": "/home/ci/pika/.pikaci/runs/x/prepared-outputs.json",
  "prepared_output_consumer": "remote_exposure_request_v1",
  "prepared_output_mode": "remote",
  "prepared_output_invocation_mode": "direct_helper_exec_v1",
  "prepared_output_invocation_wrapper_program": null,
  "prepared_output_launcher_transport_mode": "ssh_launcher_transport_v1",
  "prepared_output_launcher_transport_program": "/nix/store/abc-ssh/bin/ssh",
  "prepared_output_launcher_transport_host": "pika-build",
  "prepared_output_launcher_transport_remote_launcher_program": "/run/current-system/sw/bin/l",
  "prepared_output_launcher_transport_remote_helper_program": "/run/current-system/sw/bin/h",
  "prepared_output_launcher_transport_remote_work_dir": "/var/tmp/pikaci-prepared-output",
  "changed_files": ["rust/src/lib.rs"],
  "filters": ["rust/**"],
  "message": null,
  "prepare_timings": [
    {
      "node_id": "prepare-workspace-deps",
      "started_at": "2026-03-10T22:33:11.000000001+00:00",
      "finished_at": "2026-03-10T22:35:11.500000999+00:00",
      "duration_ms": 120500
    }
  ],
  "jobs": [
    {
      "id": "pika-core-lib-app-flows-tests",
      "description": "pika_core lib and app_flows tests",
      "status": "failed",
      "executor": "remote_linux_vm",
      "placement": "remote_ssh",
      "runtime": "incus",
      "plan_node_id": "execute-pika-core-lib-app-flows-tests",
      "timeout_secs": 1800,
      "host_log_path": "/home/ci/pika/.pikaci/runs/x/jobs/pika-core/host.log",
      "guest_log_path": "/home/ci/pika/.pikaci/runs/x/jobs/pika-core/artifacts/guest.log",
      "started_at": "2026-03-10T22:35:12.111111111+00:00",
      "finished_at": "2026-03-10T22:41:02.222222222+00:00",
      "exit_code": 101,
      "message": "test command exited with 101",
      "pre_execution_prepare_duration_ms": 120500,
      "remote_linux_vm_execution": {
        "backend": "incus",
        "incus_image": {"project": "pika", "alias": "pikaci/dev", "fingerprint": "f00d"},
        "phases": [
          {
            "phase": "launch_guest",
            "started_at": "2026-03-10T22:35:13.999999999+00:00",
            "finished_at": "2026-03-10T22:35:20.000000001+00:00",
            "duration_ms": 6000
          }
        ]
      }
    }
  ]
}
"""


def minimal_run(**overrides: Any) -> Dict[str, Any]:
    data: Dict[str, Any] = {
        "run_id": RUN_ID,
        "status": "running",
        "created_at": "2026-03-10T22:33:10.000000+00:00",
    }
    data.update(overrides)
    return data


def full_run_record() -> RunRecord:
    return RunRecord.from_dict(loads_object(UPSTREAM_RUN_JSON, "run.json"), "run.json")


# -- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 3, 10, 22, 33, 10, tzinfo=UTC), "2026-03-10T22:33:10.000000+00:00"),
        (datetime(2026, 3, 10, 22, 33, 10, 7, tzinfo=UTC), "2026-03-10T22:33:10.000007+00:00"),
        (
            datetime(
                2026, 3, 11, 4, 3, 10, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))
            ),
            "2026-03-10T22:33:10.123456+00:00",
        ),
        (
            datetime(2026, 3, 10, 17, 33, 10, 999999, tzinfo=timezone(timedelta(hours=-5))),
            "2026-03-10T22:33:10.999999+00:00",
        ),
    ],
)
def test_format_timestamp_is_utc_with_six_fraction_digits(moment, expected):
    text = format_timestamp(moment)
    assert text == expected
    assert FORMATTED.match(text)
    assert parse_timestamp(text) == moment


def test_now_timestamp_has_the_canonical_shape_and_is_now():
    before = datetime.now(UTC)
    text = now_timestamp()
    after = datetime.now(UTC)
    assert FORMATTED.match(text), text
    assert before <= parse_timestamp(text) <= after


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-10T22:33:10+00:00", datetime(2026, 3, 10, 22, 33, 10, tzinfo=UTC)),
        ("2026-03-10T22:33:10.5+00:00", datetime(2026, 3, 10, 22, 33, 10, 500000, tzinfo=UTC)),
        ("2026-03-10T22:33:10.123+00:00", datetime(2026, 3, 10, 22, 33, 10, 123000, tzinfo=UTC)),
        (
            "2026-03-10T22:33:10.123456+00:00",
            datetime(2026, 3, 10, 22, 33, 10, 123456, tzinfo=UTC),
        ),
        # upstream's nine digits: truncated to microseconds, not rounded
        (
            "2026-03-10T22:33:10.123456789+00:00",
            datetime(2026, 3, 10, 22, 33, 10, 123456, tzinfo=UTC),
        ),
        (
            "2026-03-10T22:33:10.999999999+00:00",
            datetime(2026, 3, 10, 22, 33, 10, 999999, tzinfo=UTC),
        ),
        ("2026-03-10T22:33:10Z", datetime(2026, 3, 10, 22, 33, 10, tzinfo=UTC)),
        ("2026-03-10T22:33:10.25z", datetime(2026, 3, 10, 22, 33, 10, 250000, tzinfo=UTC)),
        ("2026-03-10T17:03:10-05:30", datetime(2026, 3, 10, 22, 33, 10, tzinfo=UTC)),
        ("2026-03-11T04:03:10.000001+05:30", datetime(2026, 3, 10, 22, 33, 10, 1, tzinfo=UTC)),
        ("2026-03-10 22:33:10.123456+00:00", datetime(2026, 3, 10, 22, 33, 10, 123456, tzinfo=UTC)),
        ("2026-03-10t22:33:10Z", datetime(2026, 3, 10, 22, 33, 10, tzinfo=UTC)),
        # no offset at all means UTC (not local time)
        ("2026-03-10T22:33:10", datetime(2026, 3, 10, 22, 33, 10, tzinfo=UTC)),
        ("2026-03-10T22:33:10.123456789", datetime(2026, 3, 10, 22, 33, 10, 123456, tzinfo=UTC)),
        ("  2026-03-10T22:33:10Z\n", datetime(2026, 3, 10, 22, 33, 10, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_accepts_rfc3339_variants(text, expected):
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() is not None, "result must be timezone-aware"


def test_parse_timestamp_keeps_the_given_offset():
    parsed = parse_timestamp("2026-03-10T17:03:10-05:30")
    assert parsed.utcoffset() == -timedelta(hours=5, minutes=30)
    assert parse_timestamp("2026-03-10T22:33:10").utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-03-10",
        "2026-03-10T22:33",
        "2026-03-10T22:33:10.",
        "2026-03-10T22:33:10.123 +00:00",
        "2026-03-10T22:33:10+5:30",
        "2026-03-10T22:33:10+05",
        "2026-03-10T22:33:10UTC",
        "2026-03-10T22:33:10Z+00:00",
        "20260310T223310Z",
        "2026-13-10T22:33:10Z",
        "2026-02-30T22:33:10Z",
        "2026-03-10T24:00:00Z",
        "2026-03-10T22:33:10+24:00",
        "2026-03-10T22:33:10Z trailing",
    ],
)
def test_parse_timestamp_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


@pytest.mark.parametrize(
    ("started", "finished", "expected"),
    [
        ("2026-03-10T22:33:10.100000000+00:00", "2026-03-10T22:33:12.350999999+00:00", 2250),
        ("2026-03-10T22:00:00+00:00", "2026-03-10T17:00:01.5-05:00", 1500),
        ("2026-03-10T22:00:05Z", "2026-03-10T22:00:00Z", 0),  # never negative
    ],
)
def test_duration_ms(started, finished, expected):
    assert duration_ms(started, finished) == expected


# -- run ids ----------------------------------------------------------------------------------


def test_new_run_id_shape_from_a_given_moment():
    moment = datetime(
        2026, 3, 11, 4, 3, 10, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )
    run_id = new_run_id(moment)
    assert re.fullmatch(r"20260310T223310Z-[0-9a-f]{8}", run_id), run_id
    assert is_run_id(run_id)


def test_new_run_id_defaults_to_now_and_is_random():
    before = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    ids = {new_run_id() for _ in range(64)}
    after = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    assert len(ids) == 64
    for run_id in ids:
        assert is_run_id(run_id)
        assert before <= run_id[:16] <= after


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20260310T223310Z-e53c83eb", True),
        ("20260310T223310Z-00000000", True),
        ("20260310T223310Z-E53C83EB", False),
        ("20260310T223310Z-e53c83e", False),
        ("20260310T223310Z-e53c83ebb", False),
        ("20260310T223310Z-e53c83eg", False),
        ("20260310T223310-e53c83eb", False),
        ("20260310223310Z-e53c83eb", False),
        ("2026031T223310Z-e53c83eb", False),
        ("20260310T223310Z_e53c83eb", False),
        (" 20260310T223310Z-e53c83eb", False),
        ("../20260310T223310Z-e53c83eb", False),
        ("20260310T223310Z-e53c83eb/..", False),
        ("", False),
    ],
)
def test_is_run_id(text, expected):
    assert is_run_id(text) is expected


def test_is_run_id_rejects_a_trailing_newline():
    assert is_run_id("20260310T223310Z-e53c83eb\n") is False


# -- run and job records ----------------------------------------------------------------------


def test_run_record_keys_follow_upstream_order_and_additions_come_last():
    keys = list(RunRecord(run_id=RUN_ID, created_at="2026-03-10T22:33:10+00:00").to_dict())
    assert keys[: len(UPSTREAM_RUN_FIELDS)] == UPSTREAM_RUN_FIELDS
    assert not set(keys[len(UPSTREAM_RUN_FIELDS) :]) & set(UPSTREAM_RUN_FIELDS)
    assert "extra" not in keys


def test_job_record_keys_follow_upstream_order_and_additions_come_last():
    keys = list(JobRecord(id="build").to_dict())
    assert keys[: len(UPSTREAM_JOB_FIELDS)] == UPSTREAM_JOB_FIELDS
    assert not set(keys[len(UPSTREAM_JOB_FIELDS) :]) & set(UPSTREAM_JOB_FIELDS)
    assert "extra" not in keys


def test_decoding_shuffled_keys_writes_them_back_in_upstream_order():
    data = orjson.loads(UPSTREAM_RUN_JSON)
    shuffled = dict(reversed(list(data.items())))
    shuffled["jobs"] = [dict(reversed(list(job.items()))) for job in data["jobs"]]
    out = RunRecord.from_dict(shuffled).to_dict()
    assert list(out)[: len(UPSTREAM_RUN_FIELDS)] == UPSTREAM_RUN_FIELDS
    assert list(out["jobs"][0])[: len(UPSTREAM_JOB_FIELDS)] == UPSTREAM_JOB_FIELDS
    assert list(out["jobs"][0]["remote_linux_vm_execution"]) == ["backend", "incus_image", "phases"]


def test_full_record_round_trips_byte_for_byte():
    record = full_run_record()
    first = dumps_pretty(record.to_dict())
    again = RunRecord.from_dict(loads_object(first, "run.json"), "run.json")
    assert dumps_pretty(again.to_dict()) == first
    assert again == record


def test_upstream_record_with_nanosecond_timestamps_decodes_unchanged():
    record = full_run_record()
    assert record.status == RUN_FAILED
    assert record.target_id == "pre-merge-pika-rust"
    assert record.changed_files == ["rust/src/lib.rs"]
    assert record.prepare_timings[0].duration_ms == 120500
    job = record.jobs[0]
    assert job.exit_code == 101 and job.runtime == "incus"
    vm = job.remote_linux_vm_execution
    assert vm is not None and vm.incus_image is not None
    assert vm.incus_image.alias == "pikaci/dev"
    assert vm.phases[0].phase == "launch_guest"
    assert parse_timestamp(record.created_at).microsecond == 123456
    # the strings themselves are kept verbatim, nanoseconds included
    out = record.to_dict()
    upstream = orjson.loads(UPSTREAM_RUN_JSON)
    for key in UPSTREAM_RUN_FIELDS:
        if key != "jobs":
            assert out[key] == upstream[key], key
    for key in UPSTREAM_JOB_FIELDS:
        assert out["jobs"][0][key] == upstream["jobs"][0][key], key
    assert out["created_at"] == "2026-03-10T22:33:10.123456789+00:00"
    assert duration_ms(record.created_at, record.finished_at or "") == 472864


def test_missing_optional_fields_take_defaults():
    record = RunRecord.from_dict(minimal_run())
    assert record.jobs == [] and record.changed_files == [] and record.filters == []
    assert record.prepare_timings == []
    assert record.rerun_of is None and record.finished_at is None and record.git_dirty is None
    assert record.snapshot_dir == "" and record.source_root == ""
    assert record.orchestrator == "pikaci"
    assert record.extra == {}
    job = JobRecord.from_dict({"id": "build", "status": "passed"})
    assert job.remote_linux_vm_execution is None and job.timeout_secs == 0 and job.exit_code is None


def test_explicit_nulls_for_list_and_nested_fields_take_defaults():
    data = minimal_run(
        changed_files=None,
        filters=None,
        prepare_timings=None,
        jobs=[
            {
                "id": "build",
                "status": "running",
                "remote_linux_vm_execution": {"incus_image": None, "phases": None},
            },
            {"id": "lint", "status": "running", "remote_linux_vm_execution": None},
        ],
    )
    record = RunRecord.from_dict(data)
    assert record.changed_files == [] and record.filters == [] and record.prepare_timings == []
    vm = record.jobs[0].remote_linux_vm_execution
    assert vm is not None
    assert vm.backend == "incus" and vm.incus_image is None and vm.phases == []
    assert record.jobs[1].remote_linux_vm_execution is None
    assert RunRecord.from_dict(minimal_run(jobs=None)).jobs == []
    out = record.to_dict()
    assert out["changed_files"] == [] and out["prepare_timings"] == []


def test_unknown_fields_are_kept_and_written_back_at_every_level():
    data = orjson.loads(UPSTREAM_RUN_JSON)
    data["forge_ref"] = {"branch": "main", "pr": 7}
    data["jobs"][0]["shard"] = [1, 4]
    data["jobs"][0]["remote_linux_vm_execution"]["gpu"] = True
    data["jobs"][0]["remote_linux_vm_execution"]["phases"][0]["attempt"] = 2
    data["prepare_timings"][0]["cache_hit"] = False
    record = RunRecord.from_dict(copy.deepcopy(data))
    assert record.extra == {"forge_ref": {"branch": "main", "pr": 7}}
    assert record.jobs[0].extra == {"shard": [1, 4]}
    out = record.to_dict()
    assert out["forge_ref"] == {"branch": "main", "pr": 7}
    job = out["jobs"][0]
    assert job["shard"] == [1, 4]
    assert job["remote_linux_vm_execution"]["gpu"] is True
    assert job["remote_linux_vm_execution"]["phases"][0]["attempt"] == 2
    assert out["prepare_timings"][0]["cache_hit"] is False
    # known fields keep their upstream positions; unknown ones follow them
    assert list(out)[: len(UPSTREAM_RUN_FIELDS)] == UPSTREAM_RUN_FIELDS
    assert list(out)[-1] == "forge_ref"
    assert list(job)[-1] == "shard"
    # and they survive a second trip
    assert RunRecord.from_dict(orjson.loads(dumps_pretty(out))).to_dict() == out


def _drop(key: str) -> Callable[[Dict[str, Any]], None]:
    return lambda data: data.pop(key)


def _set(key: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    return lambda data: data.__setitem__(key, value)


def _set_job(key: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    return lambda data: data["jobs"][0].__setitem__(key, value)


def _drop_job(key: str) -> Callable[[Dict[str, Any]], None]:
    return lambda data: data["jobs"][0].pop(key)


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (_drop("run_id"), ["run.json", "missing required field `run_id`"]),
        (_set("run_id", None), ["run.json", "`run_id`"]),
        (_drop("status"), ["run.json", "`status`"]),
        (_drop("created_at"), ["run.json", "`created_at`"]),
        (_set("status", "exploded"), ["run.json.status", "'exploded'"]),
        (_set("status", "PASSED"), ["run.json.status"]),
        (_set("created_at", "yesterday"), ["run.json.created_at", "'yesterday'"]),
        (_set("created_at", ""), ["run.json.created_at"]),
        (_set("jobs", {"build": {}}), ["run.json.jobs", "list"]),
        (_set("jobs", "build"), ["run.json.jobs", "list"]),
        (_set("jobs", ["build"]), ["run.json.jobs[0]", "object"]),
        (_set("changed_files", ["a.rs", 3]), ["run.json.changed_files"]),
        (_set("filters", "rust/**"), ["run.json.filters"]),
        (_set("prepare_timings", [{"node_id": "x"}, 7]), ["run.json.prepare_timings[1]"]),
        (_drop_job("id"), ["run.json.jobs[0]", "`id`"]),
        (_set_job("id", ""), ["run.json.jobs[0].id"]),
        (_set_job("id", 12), ["run.json.jobs[0].id"]),
        (_drop_job("status"), ["run.json.jobs[0]", "`status`"]),
        (_set_job("status", "done"), ["run.json.jobs[0].status", "'done'"]),
        (_set_job("remote_linux_vm_execution", "incus"), ["jobs[0].remote_linux_vm_execution"]),
    ],
)
def test_invalid_records_raise_record_error_naming_the_field(change, fragments):
    data = orjson.loads(UPSTREAM_RUN_JSON)
    change(data)
    with pytest.raises(RecordError) as info:
        RunRecord.from_dict(data, "run.json")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_nested_decoding_errors_carry_the_full_path():
    data = orjson.loads(UPSTREAM_RUN_JSON)
    data["jobs"].append({"id": "second", "status": "passed"})
    data["jobs"][1]["remote_linux_vm_execution"] = {"phases": [{"phase": "a"}, "b"]}
    with pytest.raises(RecordError, match=r"run\.json\.jobs\[1\]\.remote_linux_vm_execution"):
        RunRecord.from_dict(data, "run.json")


def test_default_record_name_in_errors():
    with pytest.raises(RecordError, match=r"^record: missing required field `run_id`"):
        RunRecord.from_dict({"status": "running", "created_at": "2026-03-10T22:33:10Z"})


def test_non_string_created_at_is_a_record_error():
    with pytest.raises(RecordError, match=r"created_at"):
        RunRecord.from_dict(minimal_run(created_at=1773181990), "run.json")


def test_loads_object_errors():
    with pytest.raises(RecordError, match=r"^x\.json: invalid JSON"):
        loads_object(b'{"run_id": "2026', "x.json")
    with pytest.raises(RecordError, match=r"^x\.json: expected a JSON object, got list"):
        loads_object(b"[1, 2]", "x.json")
    assert loads_object(b'{"a": 1}', "x.json") == {"a": 1}


def test_run_record_job_lookup_and_upsert():
    record = RunRecord.from_dict(minimal_run())
    record.upsert_job(JobRecord(id="a", status="running"))
    record.upsert_job(JobRecord(id="b", status="running"))
    record.upsert_job(JobRecord(id="a", status=RUN_PASSED, exit_code=0))
    assert [job.id for job in record.jobs] == ["a", "b"]
    found = record.job("a")
    assert found is not None and found.status == RUN_PASSED and found.exit_code == 0
    assert record.job("missing") is None


# -- terminal results -------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "job_status"), [("completed", "passed"), ("failed", "failed")])
def test_terminal_result_vocabulary(status, job_status):
    result = TerminalResult.from_dict(
        {"schema_version": 1, "status": status, "exit_code": 0, "finished_at": "", "message": ""}
    )
    assert result.job_status == job_status


@pytest.mark.parametrize("status", ["passed", "COMPLETED", "success", "", 0, ["completed"]])
def test_terminal_result_rejects_other_statuses(status):
    with pytest.raises(RecordError, match=r"result\.json\.status"):
        TerminalResult.from_dict({"status": status}, "result.json")


def test_terminal_result_requires_a_status():
    with pytest.raises(RecordError, match=r"missing required field `status`"):
        TerminalResult.from_dict({"exit_code": 0}, "result.json")


# -- lifecycle events -------------------------------------------------------------------------


def test_run_started_event_has_exactly_the_upstream_keys_with_nulls():
    record = RunRecord.from_dict(minimal_run())
    event = run_started_event(record)
    assert list(event) == [
        "event",
        "run_id",
        "created_at",
        "rerun_of",
        "target_id",
        "target_description",
    ]
    assert event == {
        "event": "run_started",
        "run_id": RUN_ID,
        "created_at": "2026-03-10T22:33:10.000000+00:00",
        "rerun_of": None,
        "target_id": None,
        "target_description": None,
    }
    assert orjson.loads(dumps_line(event)) == event


def test_job_event_carries_the_full_job_record_with_nulls():
    job = JobRecord(id="build", status="running", started_at="2026-03-10T22:33:10Z")
    event = job_event("job_started", RUN_ID, job)
    assert list(event) == ["event", "run_id", "job"]
    assert event["event"] == "job_started" and event["run_id"] == RUN_ID
    assert list(event["job"])[: len(UPSTREAM_JOB_FIELDS)] == UPSTREAM_JOB_FIELDS
    assert event["job"]["exit_code"] is None and event["job"]["finished_at"] is None
    assert event["job"]["remote_linux_vm_execution"] is None


def test_run_finished_event_carries_the_full_run_record():
    record = full_run_record()
    event = run_finished_event(record)
    assert list(event) == ["event", "run"]
    assert event["event"] == "run_finished"
    assert event["run"] == record.to_dict()
    assert "rerun_of" in event["run"] and event["run"]["rerun_of"] is None
    line = dumps_line(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == event


# -- plan and prepared outputs ----------------------------------------------------------------


def test_plan_node_emits_only_the_body_matching_its_kind():
    prepare = PlanNode(kind="prepare", id="prepare-deps", prepare={"installable": "x"}, execute={})
    out = prepare.to_dict()
    assert out["prepare"] == {"installable": "x"} and "execute" not in out
    execute = PlanNode(kind="execute", id="execute-build", prepare={"x": 1}, execute={"cmd": "t"})
    out = execute.to_dict()
    assert out["execute"] == {"cmd": "t"} and "prepare" not in out
    # the body key is present (as null) even when empty
    assert PlanNode(kind="execute", id="e").to_dict()["execute"] is None
    assert list(PlanNode(kind="prepare", id="p").to_dict())[:2] == ["kind", "id"]


def test_plan_record_nests_plan_node_bodies_by_kind():
    plan = RunPlanRecord(
        run_id=RUN_ID,
        nodes=[
            PlanNode(kind="prepare", id="p", prepare={"a": 1}),
            PlanNode(kind="execute", id="e", depends_on=["p"], execute={"b": 2}),
        ],
    )
    nodes = plan.to_dict()["nodes"]
    assert "execute" not in nodes[0] and nodes[0]["prepare"] == {"a": 1}
    assert "prepare" not in nodes[1] and nodes[1]["execute"] == {"b": 2}
    again = RunPlanRecord.from_dict(orjson.loads(dumps_pretty(plan.to_dict())))
    assert again.to_dict() == plan.to_dict()
    assert again.preconditions == ["host_setup_complete", "workspace_snapshot_created"]


def test_prepared_outputs_upsert_replaces_by_node_id():
    record = PreparedOutputsRecord()
    record.upsert(RealizedPreparedOutputRecord(node_id="deps", realized_path="/nix/store/a"))
    record.upsert(RealizedPreparedOutputRecord(node_id="build", realized_path="/nix/store/b"))
    record.upsert(
        RealizedPreparedOutputRecord(
            node_id="deps",
            realized_path="/nix/store/c",
            exposures=[Exposure(path="/run/deps")],
        )
    )
    assert [(o.node_id, o.realized_path) for o in record.outputs] == [
        ("deps", "/nix/store/c"),
        ("build", "/nix/store/b"),
    ]
    out = record.to_dict()
    assert out["schema_version"] == 1
    assert out["outputs"][0]["exposures"] == [
        {"kind": "host_symlink_mount", "path": "/run/deps", "access": "read_only"}
    ]
    assert PreparedOutputsRecord.from_dict(orjson.loads(dumps_pretty(out))).to_dict() == out


def test_prepared_outputs_empty_record_and_missing_node_id():
    assert PreparedOutputsRecord().to_dict() == {"schema_version": 1, "outputs": []}
    with pytest.raises(RecordError, match=r"p\.json\.outputs\[0\].*`node_id`"):
        PreparedOutputsRecord.from_dict({"outputs": [{"realized_path": "/x"}]}, "p.json")
