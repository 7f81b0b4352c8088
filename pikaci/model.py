"""Run, job, plan and prepared-output records, lifecycle events, ids and timestamps.

Field names, their order and the status vocabularies follow the records of the system pikaci
replaces, so existing consumers keep working. Additions go at the end of a record; nothing is
renamed or removed. Decoding is tolerant: missing optional fields take their defaults, unknown
fields are kept (and written back) so a newer writer's data survives an older reader."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar

import orjson

from pikaci.timestamps import parse_timestamp

# -- vocabularies ---------------------------------------------------------------------------

RUN_RUNNING = "running"
RUN_PASSED = "passed"
RUN_FAILED = "failed"
RUN_SKIPPED = "skipped"
RUN_STATUSES = (RUN_RUNNING, RUN_PASSED, RUN_FAILED, RUN_SKIPPED)
TERMINAL_STATUSES = (RUN_PASSED, RUN_FAILED, RUN_SKIPPED)

RESULT_COMPLETED = "completed"
RESULT_FAILED = "failed"

PLAN_SCHEMA_VERSION = 1
PREPARED_OUTPUTS_SCHEMA_VERSION = 1
RESULT_SCHEMA_VERSION = 1


class RecordError(ValueError):
    """A record file exists but cannot be decoded; the message names what is wrong."""


# -- JSON -----------------------------------------------------------------------------------


def dumps_pretty(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"


def dumps_line(data: Any) -> bytes:
    return orjson.dumps(data) + b"\n"


def loads_object(raw: bytes, what: str) -> Dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"{what}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RecordError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


# -- record base ----------------------------------------------------------------------------

R = TypeVar("R", bound="Record")
Decoder = Callable[[Any, str], Any]


@dataclass
class Record:
    """Dataclass record with ordered serialisation and preservation of unknown fields."""

    extra: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for item in dataclasses.fields(self):
            if item.name == "extra":
                continue
            out[item.name] = _encode(getattr(self, item.name))
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], what: str = "record") -> R:
        decoders = cls._field_decoders()
        names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        for required in cls._required_fields():
            if data.get(required) is None:
                raise RecordError(f"{what}: missing required field `{required}`")
        kwargs: Dict[str, Any] = {}
        checks = _field_checks(cls)  # type: ignore[arg-type]
        for name in names:
            # an explicit null for a field that cannot hold one means "use the default"
            nullable = name not in decoders and checks[name][1](None)
            if name not in data or (data[name] is None and not nullable):
                continue
            decoder = decoders.get(name)
            if decoder is not None:
                kwargs[name] = decoder(data[name], f"{what}.{name}")
                continue
            expected, accepts = checks[name]
            if not accepts(data[name]):
                found = "null" if data[name] is None else type(data[name]).__name__
                raise RecordError(f"{what}.{name}: expected {expected}, got {found}")
            kwargs[name] = data[name]
        try:
            record = cls(**kwargs)
        except TypeError as exc:
            raise RecordError(f"{what}: {exc}") from None
        record.extra = {k: v for k, v in data.items() if k not in names}
        record.validate(what)
        return record

    @classmethod
    def _field_decoders(cls) -> Dict[str, Decoder]:
        return {}

    @classmethod
    def _required_fields(cls) -> Tuple[str, ...]:
        return ()

    def validate(self, what: str) -> None:
        """Type checks that matter to readers; override in subclasses."""


Check = Tuple[str, Callable[[Any], bool]]
_SCALARS: Dict[str, Check] = {
    "str": ("a string", lambda value: isinstance(value, str)),
    # bool is an int in Python, never in a record
    "int": ("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool)),
    "float": (
        "a number",
        lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
    ),
    "bool": ("true or false", lambda value: isinstance(value, bool)),
    "List[str]": (
        "a list of strings",
        lambda value: isinstance(value, list) and all(isinstance(item, str) for item in value),
    ),
    "Dict[str, Any]": ("an object", lambda value: isinstance(value, dict)),
    "Any": ("anything", lambda value: True),
}


@functools.cache
def _field_checks(cls: type) -> Dict[str, Check]:
    """Per field, what a reader may rely on: the declared type, from the annotation text (a
    wrong-typed field makes the record corrupt, like invalid JSON, instead of failing later)."""
    checks: Dict[str, Check] = {}
    for item in dataclasses.fields(cls):
        annotation = str(item.type)
        optional = annotation.startswith("Optional[")
        inner = annotation[len("Optional[") : -1] if optional else annotation
        expected, accepts = _SCALARS.get(inner, _SCALARS["Any"])
        checks[item.name] = (
            (f"{expected} or null", _or_null(accepts))
            if optional
            else (
                expected,
                accepts,
            )
        )
    return checks


def _or_null(accepts: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or accepts(value)


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_encode(item) for item in value]
    return value


def list_of(kind: type[Record]) -> Decoder:
    def decode(value: Any, what: str) -> List[Any]:
        if not isinstance(value, list):
            raise RecordError(f"{what}: expected a list")
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise RecordError(f"{what}[{index}]: expected an object")
            out.append(kind.from_dict(item, f"{what}[{index}]"))
        return out

    return decode


def _one_of(kind: type[Record]) -> Decoder:
    def decode(value: Any, what: str) -> Any:
        if not isinstance(value, dict):
            raise RecordError(f"{what}: expected an object")
        return kind.from_dict(value, what)

    return decode


def _str_list(value: Any, what: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RecordError(f"{what}: expected a list of strings")
    return list(value)


def _check_status(value: Any, what: str) -> None:
    if value not in RUN_STATUSES:
        raise RecordError(f"{what}: unknown status {value!r}")


# -- job and run records --------------------------------------------------------------------


@dataclass
class PhaseTiming(Record):
    phase: str = ""
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    duration_ms: Optional[int] = None


@dataclass
class IncusImage(Record):
    project: str = ""
    alias: str = ""
    fingerprint: str = ""


@dataclass
class RemoteLinuxVmExecution(Record):
    backend: str = "incus"
    incus_image: Optional[IncusImage] = None
    phases: List[PhaseTiming] = field(default_factory=list)

    @classmethod
    def _field_decoders(cls) -> Dict[str, Decoder]:
        return {"incus_image": _one_of(IncusImage), "phases": list_of(PhaseTiming)}


@dataclass
class JobRecord(Record):
    id: str = ""
    description: str = ""
    status: str = RUN_RUNNING
    executor: str = ""
    placement: str = ""
    runtime: str = ""
    plan_node_id: str = ""
    timeout_secs: int = 0
    host_log_path: str = ""
    guest_log_path: str = ""
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    exit_code: Optional[int] = None
    message: Optional[str] = None
    pre_execution_prepare_duration_ms: Optional[int] = None
    remote_linux_vm_execution: Optional[RemoteLinuxVmExecution] = None
    # additions
    target_id: Optional[str] = None
    reused_from_run: Optional[str] = None
    identity: Optional[str] = None
    artifacts_dir: Optional[str] = None
    snapshot_dir: Optional[str] = None  # runs spanning targets have one snapshot per target
    content_hash: Optional[str] = None
    sandbox: Optional[str] = None  # "bubblewrap": runtime says host_process (pikaci.vocabulary)

    @classmethod
    def _field_decoders(cls) -> Dict[str, Decoder]:
        return {"remote_linux_vm_execution": _one_of(RemoteLinuxVmExecution)}

    @classmethod
    def _required_fields(cls) -> Tuple[str, ...]:
        return ("id", "status")

    def validate(self, what: str) -> None:
        _check_status(self.status, f"{what}.status")
        if not isinstance(self.id, str) or not self.id:
            raise RecordError(f"{what}.id: expected a non-empty string")


@dataclass
class PrepareTiming(Record):
    node_id: str = ""
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    duration_ms: Optional[int] = None


@dataclass
class UploadRecord(Record):
    """One transfer to a builder: a workspace snapshot or a payload closure (an addition)."""

    kind: str = ""  # snapshot | closure
    builder: str = ""
    subject: str = ""  # the snapshot's tree id, or the payload node id
    node_id: Optional[str] = None  # the task that uploaded: `build:…`, `upload:…`, or a lane
    paths: int = 0  # store paths copied (closures) or 1 for a snapshot tree; 0 = already there
    bytes: int = 0
    seconds: float = 0.0
    skipped: bool = False  # the builder already had everything


@dataclass
class RunRecord(Record):
    run_id: str = ""
    status: str = RUN_RUNNING
    rerun_of: Optional[str] = None
    target_id: Optional[str] = None
    target_description: Optional[str] = None
    source_root: str = ""
    snapshot_dir: str = ""
    git_head: Optional[str] = None
    git_dirty: Optional[bool] = None
    created_at: str = ""
    finished_at: Optional[str] = None
    plan_path: Optional[str] = None
    prepared_outputs_path: Optional[str] = None
    prepared_output_consumer: Optional[str] = None
    prepared_output_mode: Optional[str] = None
    prepared_output_invocation_mode: Optional[str] = None
    prepared_output_invocation_wrapper_program: Optional[str] = None
    prepared_output_launcher_transport_mode: Optional[str] = None
    prepared_output_launcher_transport_program: Optional[str] = None
    prepared_output_launcher_transport_host: Optional[str] = None
    prepared_output_launcher_transport_remote_launcher_program: Optional[str] = None
    prepared_output_launcher_transport_remote_helper_program: Optional[str] = None
    prepared_output_launcher_transport_remote_work_dir: Optional[str] = None
    changed_files: List[str] = field(default_factory=list)
    filters: List[str] = field(default_factory=list)
    message: Optional[str] = None
    prepare_timings: List[PrepareTiming] = field(default_factory=list)
    jobs: List[JobRecord] = field(default_factory=list)
    # additions
    content_hash: Optional[str] = None
    orchestrator: str = "pikaci"
    uploads: List[UploadRecord] = field(default_factory=list)

    @classmethod
    def _field_decoders(cls) -> Dict[str, Decoder]:
        return {
            "changed_files": _str_list,
            "filters": _str_list,
            "prepare_timings": list_of(PrepareTiming),
            "jobs": list_of(JobRecord),
            "uploads": list_of(UploadRecord),
        }

    @classmethod
    def _required_fields(cls) -> Tuple[str, ...]:
        return ("run_id", "status", "created_at")

    def validate(self, what: str) -> None:
        _check_status(self.status, f"{what}.status")
        if not isinstance(self.run_id, str) or not self.run_id:
            raise RecordError(f"{what}.run_id: expected a non-empty string")
        try:
            parse_timestamp(self.created_at)
        except (TypeError, ValueError):
            raise RecordError(f"{what}.created_at: not a timestamp: {self.created_at!r}") from None

    def job(self, job_id: str) -> Optional[JobRecord]:
        return next((job for job in self.jobs if job.id == job_id), None)

    def upsert_job(self, job: JobRecord) -> None:
        for index, existing in enumerate(self.jobs):
            if existing.id == job.id:
                self.jobs[index] = job
                return
        self.jobs.append(job)


# -- plan -----------------------------------------------------------------------------------


@dataclass
class PlanNode(Record):
    kind: str = "execute"  # prepare | execute
    id: str = ""
    description: str = ""
    executor: str = ""
    placement: str = ""
    runtime: str = ""
    depends_on: List[str] = field(default_factory=list)
    prepare: Optional[Dict[str, Any]] = None
    execute: Optional[Dict[str, Any]] = None
    sandbox: Optional[str] = None  # addition, as on JobRecord

    def to_dict(self) -> Dict[str, Any]:
        out = super().to_dict()
        # the body key matches the kind; the other one is not part of the node
        out.pop("execute" if self.kind == "prepare" else "prepare", None)
        return out


@dataclass
class RunPlanRecord(Record):
    schema_version: int = PLAN_SCHEMA_VERSION
    run_id: str = ""
    target_id: Optional[str] = None
    target_description: Optional[str] = None
    created_at: str = ""
    scope: str = "post_host_setup_and_snapshot"
    preconditions: List[str] = field(
        default_factory=lambda: ["host_setup_complete", "workspace_snapshot_created"]
    )
    nodes: List[PlanNode] = field(default_factory=list)
    # addition: pikaci's prepare nodes the reference's plan has no type for (the workspace
    # snapshot, `nix copy` to the builder); `depends_on` may name them
    pikaci_nodes: List[PlanNode] = field(default_factory=list)

    @classmethod
    def _field_decoders(cls) -> Dict[str, Decoder]:
        return {
            "nodes": list_of(PlanNode),
            "pikaci_nodes": list_of(PlanNode),
            "preconditions": _str_list,
        }


# -- prepared outputs -----------------------------------------------------------------------


@dataclass
class Exposure(Record):
    kind: str = "host_symlink_mount"
    path: str = ""
    access: str = "read_only"


@dataclass
class RealizedPreparedOutputRecord(Record):
    node_id: str = ""
    installable: str = ""
    output_name: str = ""
    protocol: str = "nix_store_path_v1"
    residency: str = "local_authoritative"
    consumer: str = "host_local_symlink_mounts_v1"
    realized_path: str = ""
    consumer_request_path: Optional[str] = None
    consumer_result_path: Optional[str] = None
    consumer_launch_request_path: Optional[str] = None
    consumer_transport_request_path: Optional[str] = None
    exposures: List[Exposure] = field(default_factory=list)
    requested_exposures: List[Exposure] = field(default_factory=list)
    payload: Optional[Dict[str, Any]] = None
    # addition: how the lanes really read it when `consumer` is the reference's nearest value
    pikaci_consumer: Optional[str] = None

    @classmethod
    def _field_decoders(cls) -> Dict[str, Decoder]:
        return {"exposures": list_of(Exposure), "requested_exposures": list_of(Exposure)}

    @classmethod
    def _required_fields(cls) -> Tuple[str, ...]:
        return ("node_id",)


@dataclass
class PreparedOutputsRecord(Record):
    schema_version: int = PREPARED_OUTPUTS_SCHEMA_VERSION
    outputs: List[RealizedPreparedOutputRecord] = field(default_factory=list)

    @classmethod
    def _field_decoders(cls) -> Dict[str, Decoder]:
        return {"outputs": list_of(RealizedPreparedOutputRecord)}

    def upsert(self, output: RealizedPreparedOutputRecord) -> None:
        for index, existing in enumerate(self.outputs):
            if existing.node_id == output.node_id:
                self.outputs[index] = output
                return
        self.outputs.append(output)


# -- terminal result written into a job's artifacts -----------------------------------------


@dataclass
class TerminalResult(Record):
    schema_version: int = RESULT_SCHEMA_VERSION
    status: str = RESULT_FAILED  # completed | failed
    exit_code: Optional[int] = None
    finished_at: str = ""
    message: str = ""
    details: Optional[Dict[str, Any]] = None

    @classmethod
    def _required_fields(cls) -> Tuple[str, ...]:
        return ("status",)

    def validate(self, what: str) -> None:
        if self.status not in (RESULT_COMPLETED, RESULT_FAILED):
            raise RecordError(f"{what}.status: expected completed or failed, got {self.status!r}")

    @property
    def job_status(self) -> str:
        return RUN_PASSED if self.status == RESULT_COMPLETED else RUN_FAILED
