"""Plan node ids and the doit task names they come from, in one place.

snapshot:<target>      -> snapshot-<target>
build:<payload>:deps   -> prepare-<payload>-workspace-deps
build:<payload>:build  -> prepare-<payload>-workspace-build
upload:<payload>       -> prepare-<payload>-upload        (payloads realized `copy`)
execute:<lane>         -> execute-<lane>
"""

from __future__ import annotations

from typing import Dict, List, Optional

from pikaci.catalog import REALIZE_COPY, Catalog, Target

PAYLOAD_ROLES = ("deps", "build")


def snapshot_node(target_id: str) -> str:
    return f"snapshot-{target_id}"


def build_task(payload_id: str, role: str) -> str:
    return f"build:{payload_id}:{role}"


def build_node(payload_id: str, role: str) -> str:
    return f"prepare-{payload_id}-workspace-{role}"


def upload_task(payload_id: str) -> str:
    return f"upload:{payload_id}"


def upload_node(payload_id: str) -> str:
    return f"prepare-{payload_id}-upload"


def execute_node(lane_id: str) -> str:
    return f"execute-{lane_id}"


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
