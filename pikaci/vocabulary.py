"""The value sets of the records' enum-like fields, as the reference's record types define them,
and where pikaci's own values go instead.

Consumers built on the reference's types accept unknown fields but reject an unknown value of
an enum field, and with it the whole record. So those fields only ever take the values below;
what pikaci has that the reference does not is recorded in additional fields, which pikaci's
CLI, server and pages read:

- a bubblewrap sandbox lane is recorded with runtime `host_process` (executor `host_local` or
  `remote_ssh_host_process`) and `sandbox: "bubblewrap"`, on its job and its execute node;
- plan nodes without a counterpart (the workspace snapshot, the `nix copy` to the builder) are
  listed in the plan's `pikaci_nodes`, not in `nodes`;
- a payload lanes read from the builder's store is recorded with consumer
  `remote_exposure_request_v1` and `pikaci_consumer: "builder_bind_mounts_v1"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from pikaci.catalog import EXECUTOR_LABELS, RUNTIME_BUBBLEWRAP, RUNTIME_HOST_PROCESS, Execution
from pikaci.incus.config import PHASES as INCUS_PHASES

RUN_STATUSES = ("running", "passed", "failed", "skipped")
EXECUTORS = (
    "host_local",
    "remote_linux_vm",
    "tart_local",
    "remote_ssh_host_process",
    "local_incus",
    "remote_ssh_tart",
)
PLACEMENTS = ("local", "remote_ssh")
RUNTIMES = ("host_process", "incus", "tart")
NODE_KINDS = ("prepare", "execute")
PREPARE_TYPES = ("nix_build", "remote_linux_vm_backend")
EXECUTE_TYPES = ("vm_command", "host_command")
PROTOCOLS = ("nix_store_path_v1",)
RESIDENCIES = ("local_authoritative", "remote_authoritative_staged_linux")
CONSUMERS = ("host_local_symlink_mounts_v1", "remote_exposure_request_v1", "fulfill_request_cli_v1")
EXPOSURE_KINDS = ("host_symlink_mount",)
EXPOSURE_ACCESS = ("read_only",)
VM_BACKENDS = ("incus",)
VM_PHASES = INCUS_PHASES  # the reference's six, timed by the Incus runtime
EVENTS = ("run_started", "job_started", "job_finished", "run_finished")

# pikaci's values recorded in the additional fields
SANDBOXES = (RUNTIME_BUBBLEWRAP,)
CONSUMER_BUILDER_MOUNTS = "builder_bind_mounts_v1"  # recorded as pikaci_consumer
CONSUMER_REMOTE_EXPOSURE = "remote_exposure_request_v1"


@dataclass(frozen=True)
class RecordedExecution:
    executor: str
    placement: str
    runtime: str
    sandbox: Optional[str] = None


def recorded_execution(execution: Execution) -> RecordedExecution:
    """A lane's placement x runtime as its job and execute node record it."""
    if execution.runtime == RUNTIME_BUBBLEWRAP:
        executor = EXECUTOR_LABELS[(execution.placement, RUNTIME_HOST_PROCESS)]
        return RecordedExecution(
            executor, execution.placement, RUNTIME_HOST_PROCESS, RUNTIME_BUBBLEWRAP
        )
    return RecordedExecution(execution.executor, execution.placement, execution.runtime)


def shown_runtime(runtime: str, sandbox: Optional[str]) -> str:
    """What people read: the sandbox when there is one."""
    return sandbox or runtime


# -- checking records -------------------------------------------------------------------------

Violations = List[str]


def _check(problems: Violations, where: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        problems.append(f"{where}: {value!r} is not one of {', '.join(allowed)}")


def job_violations(job: Mapping[str, Any], where: str) -> Violations:
    problems: Violations = []
    _check(problems, f"{where}.status", job.get("status"), RUN_STATUSES)
    _check(problems, f"{where}.executor", job.get("executor"), EXECUTORS)
    _check(problems, f"{where}.placement", job.get("placement"), PLACEMENTS)
    _check(problems, f"{where}.runtime", job.get("runtime"), RUNTIMES)
    if job.get("sandbox") is not None:
        _check(problems, f"{where}.sandbox", job.get("sandbox"), SANDBOXES)
    vm = job.get("remote_linux_vm_execution")
    if vm is not None:
        _check(
            problems, f"{where}.remote_linux_vm_execution.backend", vm.get("backend"), VM_BACKENDS
        )
        for index, phase in enumerate(vm.get("phases") or []):
            _check(
                problems,
                f"{where}.remote_linux_vm_execution.phases[{index}].phase",
                phase.get("phase"),
                VM_PHASES,
            )
    return problems


def run_violations(run: Mapping[str, Any], where: str = "run.json") -> Violations:
    problems: Violations = []
    _check(problems, f"{where}.status", run.get("status"), RUN_STATUSES)
    for index, job in enumerate(run.get("jobs") or []):
        problems += job_violations(job, f"{where}.jobs[{index}]")
    return problems


def plan_violations(plan: Mapping[str, Any], where: str = "plan.json") -> Violations:
    problems: Violations = []
    for index, node in enumerate(plan.get("nodes") or []):
        at = f"{where}.nodes[{index}]"
        kind = node.get("kind")
        _check(problems, f"{at}.kind", kind, NODE_KINDS)
        _check(problems, f"{at}.executor", node.get("executor"), EXECUTORS)
        _check(problems, f"{at}.placement", node.get("placement"), PLACEMENTS)
        _check(problems, f"{at}.runtime", node.get("runtime"), RUNTIMES)
        if kind == "prepare":
            body = node.get("prepare") or {}
            _check(problems, f"{at}.prepare.type", body.get("type"), PREPARE_TYPES)
            if body.get("type") == "nix_build":
                _check(problems, f"{at}.prepare.residency", body.get("residency"), RESIDENCIES)
                handoff = body.get("handoff") or {}
                _check(
                    problems, f"{at}.prepare.handoff.protocol", handoff.get("protocol"), PROTOCOLS
                )
        elif kind == "execute":
            body = node.get("execute") or {}
            _check(problems, f"{at}.execute.type", body.get("type"), EXECUTE_TYPES)
    return problems


def prepared_outputs_violations(
    record: Mapping[str, Any], where: str = "prepared-outputs.json"
) -> Violations:
    problems: Violations = []
    for index, output in enumerate(record.get("outputs") or []):
        at = f"{where}.outputs[{index}]"
        _check(problems, f"{at}.protocol", output.get("protocol"), PROTOCOLS)
        _check(problems, f"{at}.residency", output.get("residency"), RESIDENCIES)
        _check(problems, f"{at}.consumer", output.get("consumer"), CONSUMERS)
        for name in ("exposures", "requested_exposures"):
            for number, exposure in enumerate(output.get(name) or []):
                _check(
                    problems, f"{at}.{name}[{number}].kind", exposure.get("kind"), EXPOSURE_KINDS
                )
                _check(
                    problems,
                    f"{at}.{name}[{number}].access",
                    exposure.get("access"),
                    EXPOSURE_ACCESS,
                )
    return problems


def event_violations(event: Mapping[str, Any]) -> Violations:
    problems: Violations = []
    _check(problems, "event", event.get("event"), EVENTS)
    if "job" in event:
        problems += job_violations(event["job"], "event.job")
    if "run" in event:
        problems += run_violations(event["run"], "event.run")
    return problems


CHECKS: Dict[str, Callable[[Mapping[str, Any], str], Violations]] = {
    "run.json": run_violations,
    "plan.json": plan_violations,
    "prepared-outputs.json": prepared_outputs_violations,
    "status.json": job_violations,  # a job's record
}


def record_violations(name: str, data: Dict[str, Any]) -> Violations:
    """The enum values of a record file (`run.json`, `plan.json`, `prepared-outputs.json` or a
    job's `status.json`) outside the reference's value sets."""
    check = CHECKS.get(name)
    return [] if check is None else check(data, name)
