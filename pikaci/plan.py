"""The pure plan: task and node names, lane identities, build inputs, the run plan record.

Nothing here runs a process, reads a file or the environment: the doit layer (`pikaci.tasks`)
and the run lifecycle (`pikaci.run`) hand in what they saw and get names, digests and records
back. Task names and the plan node ids they stand for:

snapshot:<target>      -> snapshot-<target>
build:<payload>:deps   -> prepare-<payload>-workspace-deps
build:<payload>:build  -> prepare-<payload>-workspace-build
upload:<payload>       -> prepare-<payload>-upload        (payloads realized `copy`)
execute:<lane>         -> execute-<lane>
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import orjson

from pikaci.catalog import (
    REALIZE_COPY,
    REALIZE_LOCAL,
    REALIZE_ON_BUILDER,
    RUNTIME_HOST_PROCESS,
    Catalog,
    Lane,
    Target,
)
from pikaci.model import RUN_PASSED, PlanNode, RunPlanRecord, RunRecord
from pikaci.payloads.staged import RESIDENCY_BUILDER, RESIDENCY_LOCAL
from pikaci.snapshot import SnapshotFilter, SnapshotMetadata
from pikaci.vocabulary import PREPARE_TYPES, recorded_execution

IDENTITY_VERSION = 1
PAYLOAD_ROLES = ("deps", "build")
Values = Mapping[str, Any]  # a task's saved values, as doit hands them over

# -- task names -------------------------------------------------------------------------------


def snapshot_task(target_id: str) -> str:
    return f"snapshot:{target_id}"


def build_task(payload_id: str, role: str) -> str:
    return f"build:{payload_id}:{role}"


def upload_task(payload_id: str) -> str:
    return f"upload:{payload_id}"


def execute_task(lane_id: str) -> str:
    return f"execute:{lane_id}"


def collect_task(lane_id: str) -> str:
    return f"collect:{lane_id}"


def lane_task(lane_id: str) -> str:
    return f"lane:{lane_id}"


def target_task(target_id: str) -> str:
    return f"target:{target_id}"


def split_task(task_name: str) -> Tuple[str, str]:
    """`execute:demo` -> (`execute`, `demo`)."""
    kind, _, ident = task_name.partition(":")
    return kind, ident


def payload_tasks(target: Target) -> List[str]:
    if target.payloads is None:
        return []
    return [build_task(target.payloads.id, role) for role in PAYLOAD_ROLES]


def copy_tasks(target: Target) -> List[str]:
    """`upload:<payload>` when the target's payloads are copied to the builder."""
    if target.payloads is None or target.realization != REALIZE_COPY:
        return []
    return [upload_task(target.payloads.id)]


# -- plan node ids ----------------------------------------------------------------------------


def snapshot_node(target_id: str) -> str:
    return f"snapshot-{target_id}"


def build_node(payload_id: str, role: str) -> str:
    return f"prepare-{payload_id}-workspace-{role}"


def upload_node(payload_id: str) -> str:
    return f"prepare-{payload_id}-upload"


def execute_node(lane_id: str) -> str:
    return f"execute-{lane_id}"


def node_of_task(task_name: str) -> Optional[str]:
    """The prepare node a doit task stands for, or None for other tasks."""
    parts = task_name.split(":")
    if len(parts) == 2 and parts[0] == "snapshot":
        return snapshot_node(parts[1])
    if len(parts) == 3 and parts[0] == "build" and parts[2] in PAYLOAD_ROLES:
        return build_node(parts[1], parts[2])
    if len(parts) == 2 and parts[0] == "upload":
        return upload_node(parts[1])
    return None


def payload_owners(catalog: Catalog) -> Dict[str, Target]:
    """The target whose snapshot each shared payload is built from: the first declaring it."""
    owners: Dict[str, Target] = {}
    for target in catalog.targets:
        if target.payloads is not None:
            owners.setdefault(target.payloads.id, target)
    return owners


def prepare_nodes(target: Target, owner: Optional[Target] = None) -> List[str]:
    """The prepare nodes a lane of `target` waits for, in order; `owner` is the target whose
    snapshot its payloads are built from (itself unless the payloads are shared)."""
    nodes = [snapshot_node(target.id)]
    if target.payloads is not None:
        if owner is not None and owner.id != target.id:
            nodes.append(snapshot_node(owner.id))
        nodes += [build_node(target.payloads.id, role) for role in PAYLOAD_ROLES]
        if target.realization == REALIZE_COPY:
            nodes.append(upload_node(target.payloads.id))
    return nodes


# -- snapshots --------------------------------------------------------------------------------


def snapshot_filter(target: Target, source_root: Path, state_root: Path) -> SnapshotFilter:
    """The target's copy filter, plus the state root when it sits inside the source tree
    (both paths resolved by the caller)."""
    excludes = list(target.snapshot_excludes)
    try:
        inside = state_root.relative_to(source_root)
    except ValueError:
        inside = None
    if inside is not None and str(inside) not in (".", ".pikaci"):
        excludes.append("/" + inside.as_posix())
    return SnapshotFilter(extra_excludes=tuple(excludes))


def snapshot_values(metadata: SnapshotMetadata) -> Dict[str, Any]:
    """The snapshot task's result: what lanes and builds depend on, nothing circumstantial."""
    return {
        "content_hash": metadata.content_hash,
        "tree_id": metadata.identity,
        "snapshot_dir": metadata.snapshot_dir,
    }


def snapshot_identity(values: Values) -> str:
    """The snapshot as a lane sees it: content and executable bits (`tree_id`)."""
    return str(values.get("tree_id") or values.get("content_hash") or "")


def rerun_snapshot(old: RunRecord, target: Target) -> str:
    """The snapshot the old run used for `target` (runs spanning targets record one per job)."""
    for job in old.jobs:
        if job.target_id == target.id and job.snapshot_dir:
            return job.snapshot_dir
    return old.snapshot_dir


# -- identities -------------------------------------------------------------------------------


def _digest(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def lane_identity(
    lane: Lane, target: Target, snapshot_id: str, payload_paths: Sequence[str] = ()
) -> str:
    return _digest(
        {
            "version": IDENTITY_VERSION,
            "target": target.id,
            "snapshot": snapshot_id,
            "payloads": list(payload_paths),
            "lane": lane.spec(),
        }
    )


def build_inputs(
    target: Target,
    role: str,
    snapshot: Values,
    deps: Optional[Values] = None,
    builder_store: Optional[str] = None,
    nix_path: str = "",
) -> str:
    """Digest of what a payload build depends on: the snapshot (nix files and lock files live
    in it), the installable, where it is built (`builder_store`: `<host>:<store>` for builds
    on the builder), for the build payload the deps output it builds on, and `NIX_PATH` for a
    classic file (it may import from search paths outside the snapshot)."""
    assert target.payloads is not None
    ref = getattr(target.payloads, role)
    parts: Dict[str, Any] = {
        "version": IDENTITY_VERSION,
        "snapshot": snapshot_identity(snapshot),
        "attr": ref.attr,
        "file": ref.file,
        "nix_path": nix_path if ref.file is not None else "",
    }
    if target.realization != REALIZE_LOCAL:
        parts["realize"] = target.realization
    if target.realization == REALIZE_ON_BUILDER and builder_store is not None:
        parts["builder"] = builder_store
    if role == "build":
        parts["deps"] = (deps or {}).get("store_path")
    return _digest(parts)


@dataclass(frozen=True)
class LaneInputs:
    """What a lane's identity is made of: the snapshot and payload builds it would run on."""

    snapshot_dir: str
    content_hash: str
    identity: str
    git_head: Optional[str] = None
    git_dirty: Optional[bool] = None
    payloads: List[Dict[str, Any]] = field(default_factory=list)  # build tasks' saved values


def lane_inputs(
    lane: Lane, target: Target, snapshot: Values, payloads: Sequence[Values]
) -> LaneInputs:
    """The lane's inputs from its snapshot task's and build tasks' saved values."""
    paths = [str(values.get("store_path", "")) for values in payloads]
    return LaneInputs(
        snapshot_dir=str(snapshot.get("snapshot_dir", "")),
        content_hash=str(snapshot.get("content_hash", "")),
        identity=lane_identity(lane, target, snapshot_identity(snapshot), paths),
        git_head=snapshot.get("git_head"),
        git_dirty=snapshot.get("git_dirty"),
        payloads=[dict(values) for values in payloads if values],
    )


@dataclass(frozen=True)
class ReuseDecision:
    """Whether a lane's last pass covers these inputs, and why (what `doit info` shows)."""

    inputs: LaneInputs
    reusable: bool
    reason: str
    passed_run: Optional[str] = None  # the run whose pass is reused


def reuse_decision(
    inputs: LaneInputs, verdict: Values, rerun: bool, run_exists: bool
) -> ReuseDecision:
    """`verdict` is `lane:<id>`'s saved values (empty unless its last run passed); `run_exists`
    says whether the run that passed is still stored (gc removes the evidence)."""
    passed_run = verdict.get("run_id") if verdict.get("status") == RUN_PASSED else None

    def no(reason: str) -> ReuseDecision:
        return ReuseDecision(inputs, False, reason)

    if rerun:
        return no("rerun of an earlier run")
    if passed_run is None:
        return no("no recorded pass (new, failed last time, or forgotten)")
    if not run_exists:
        return no(f"the run that passed ({passed_run}) is gone (gc)")
    if verdict.get("identity") != inputs.identity:
        return no(f"inputs changed: identity {inputs.identity[:12]} != {verdict.get('identity')}")
    reason = f"passed in run {passed_run} with identity {inputs.identity[:12]}"
    return ReuseDecision(inputs, True, reason, str(passed_run))


# -- the run plan record ----------------------------------------------------------------------


def describe_run(planned: Sequence[Tuple[Target, Lane]]) -> Tuple[Optional[Target], str]:
    """The run's single target (None when it spans several) and its description."""
    targets = {target.id: target for target, _ in planned}
    if len(targets) == 1:
        target = next(iter(targets.values()))
        return target, target.description or f"target {target.id}"
    return None, "lanes " + ", ".join(lane.id for _, lane in planned)


def run_plan(
    record: RunRecord, planned: Sequence[Tuple[Target, Lane]], owners: Mapping[str, Target]
) -> RunPlanRecord:
    """`plan.json`: the prepare nodes the planned lanes wait for, then one execute node each."""
    nodes: List[PlanNode] = []
    pikaci_nodes: List[PlanNode] = []  # node types the reference's plan does not have
    seen: List[str] = []

    def prepare(node_id: str, description: str, body: Dict[str, Any], deps: List[str]) -> None:
        if node_id in seen:
            return
        seen.append(node_id)
        listed = nodes if body["type"] in PREPARE_TYPES else pikaci_nodes
        listed.append(
            PlanNode(
                kind="prepare",
                id=node_id,
                description=description,
                executor="host_local",
                placement="local",
                runtime="host_process",
                depends_on=deps,
                prepare=body,
            )
        )

    def snapshot(of: Target) -> str:
        node = snapshot_node(of.id)
        prepare(
            node,
            f"Snapshot the workspace for {of.id}",
            {"type": "workspace_snapshot", "excludes": list(of.snapshot_excludes)},
            [],
        )
        return node

    for target, lane in planned:
        owner = owners.get(target.payloads.id) if target.payloads else None
        snapshot(target)
        if target.payloads is not None:
            # shared payloads are built from their owner's snapshot (same filter, same content)
            previous = snapshot(owners.get(target.payloads.id, target))
            for role in PAYLOAD_ROLES:
                node = build_node(target.payloads.id, role)
                ref = getattr(target.payloads, role)
                prepare(
                    node,
                    f"Build staged workspace-{role} payload `{target.payloads.id}`",
                    {
                        "type": "nix_build",
                        "installable": ref.attr if ref.file is None else f"{ref.file}#{ref.attr}",
                        "output_name": ref.attr,
                        "residency": RESIDENCY_BUILDER
                        if target.realization == REALIZE_ON_BUILDER
                        else RESIDENCY_LOCAL,
                        "realize": target.realization,
                        "handoff": {"protocol": "nix_store_path_v1", "exposures": []},
                    },
                    [previous],
                )
                previous = node
            if target.realization == REALIZE_COPY:
                prepare(
                    upload_node(target.payloads.id),
                    f"Copy the closure of payload `{target.payloads.id}` to the builder",
                    {"type": "nix_copy", "protocol": "nix_store_path_v1"},
                    [previous],
                )
        guest = lane.execution.runtime != RUNTIME_HOST_PROCESS
        recorded = recorded_execution(lane.execution)
        nodes.append(
            PlanNode(
                kind="execute",
                id=execute_node(lane.id),
                description=lane.description or f"lane {lane.id}",
                executor=recorded.executor,
                placement=recorded.placement,
                runtime=recorded.runtime,
                sandbox=recorded.sandbox,
                depends_on=prepare_nodes(target, owner),
                execute={
                    "type": "vm_command" if guest else "host_command",
                    "command": lane.command,
                    **({"run_as_root": lane.run_as_root} if guest else {}),
                    "timeout_secs": lane.timeout_secs,
                    "writable_workspace": not guest,
                },
            )
        )
    return RunPlanRecord(
        run_id=record.run_id,
        target_id=record.target_id,
        target_description=record.target_description,
        created_at=record.created_at,
        nodes=nodes,
        pikaci_nodes=pikaci_nodes,
    )
