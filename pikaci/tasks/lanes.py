"""Catalog -> the task dicts of the lane graph.

Per target `snapshot:<target>` (and, with staged payloads, `build:<payload>:deps|build`, plus
`upload:<payload>` when they are copied to the builder); per lane `execute:<lane>` ->
`collect:<lane>` -> `lane:<lane>`; per target `target:<target>` over its lanes. `execute` is up
to date exactly when the lane's identity (snapshot tree id + payload store paths + lane spec)
equals the identity of its last pass, so an unchanged lane that passed is reused, a failed lane
always reruns, and `doit forget lane:<id>` forces a run.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

from pikaci.catalog import REALIZE_COPY, Catalog, Lane, Target
from pikaci.plan import (
    PAYLOAD_ROLES,
    build_task,
    collect_task,
    copy_tasks,
    execute_task,
    lane_task,
    payload_tasks,
    snapshot_task,
)
from pikaci.run.session import RunSession
from pikaci.tasks.actions import LaneActions
from pikaci.tasks.common import TaskDict
from pikaci.tasks.uptodate import (
    BuildUnchanged,
    ClosureOnBuilder,
    LaneUnchanged,
    SnapshotUnchanged,
)

GROUP_DOCS = {
    "lane": "every lane: `lane:<id>` is one lane's verdict (doit list --all shows them)",
    "target": "every target: `target:<id>` runs the lanes of one target",
    "snapshot": "filtered, content-addressed copies of the workspace, one per target",
    "build": "nix builds of staged payloads: `build:<payload>:deps|build`",
    "upload": "nix copy of staged payload closures to the builder: `upload:<payload>`",
    "execute": "run lane commands in their runtime",
    "collect": "collect lane logs and artifacts into the run bundle",
}


def group_tasks(catalog: Catalog) -> Iterator[TaskDict]:
    """The doc lines of the group tasks `doit list` shows (name=None describes the group)."""
    shown = {
        "build": any(target.payloads for target in catalog.targets),
        "upload": any(copy_tasks(target) for target in catalog.targets),
    }
    for basename, doc in GROUP_DOCS.items():
        if shown.get(basename, True):
            yield {"basename": basename, "name": None, "doc": doc}


class LaneGraph:
    def __init__(self, catalog: Catalog, session: RunSession) -> None:
        self.catalog = catalog
        self.session = session
        self.actions = LaneActions(session)

    def tasks(self) -> Iterator[TaskDict]:
        built: List[str] = []
        for target in self.catalog.targets:
            yield self._snapshot_task(target)
            if target.payloads is not None and target.payloads.id not in built:
                built.append(target.payloads.id)  # shared payloads: one pair of build tasks
                yield from self._build_tasks(target)
            for lane in target.lanes:
                yield from self._lane_tasks(target, lane)
            yield {
                "basename": "target",
                "name": target.id,
                "doc": target.description or f"every lane of {target.id}",
                "task_dep": [lane_task(lane.id) for lane in target.lanes],
                "actions": None,
            }

    def _snapshot_task(self, target: Target) -> TaskDict:
        return {
            "basename": "snapshot",
            "name": target.id,
            "doc": f"filtered copy of the workspace for {target.id}, content-addressed",
            "actions": [(self.actions.snapshot, [target])],
            "uptodate": [SnapshotUnchanged(self.session, target)],
            "clean": [(self.actions.clean_snapshot, [target])],
        }

    def _build_tasks(self, target: Target) -> Iterator[TaskDict]:
        assert target.payloads is not None
        snapshot = snapshot_task(target.id)
        for role in PAYLOAD_ROLES:
            name = build_task(target.payloads.id, role)
            deps = [snapshot]
            if role == "build":
                deps.append(build_task(target.payloads.id, "deps"))
            yield {
                "basename": "build",
                "name": name.split(":", 1)[1],
                "doc": f"nix build of the staged workspace-{role} payload `{target.payloads.id}`",
                "task_dep": deps,
                "getargs": {"snapshot": (snapshot, None)},
                "uptodate": [BuildUnchanged(self.session, target, role)],
                "actions": [(self.actions.build, [target, role])],
            }
        if target.realization == REALIZE_COPY:
            yield self._upload_task(target)

    def _upload_task(self, target: Target) -> TaskDict:
        assert target.payloads is not None
        payload_id = target.payloads.id
        builds = payload_tasks(target)
        return {
            "basename": "upload",
            "name": payload_id,
            "doc": f"nix copy of payload `{payload_id}`'s closure to the builder",
            "task_dep": builds,
            "getargs": {role: (name, None) for role, name in zip(PAYLOAD_ROLES, builds)},
            "uptodate": [ClosureOnBuilder(self.session, target)],
            "actions": [(self.actions.upload, [target])],
        }

    def _lane_tasks(self, target: Target, lane: Lane) -> Iterator[TaskDict]:
        snapshot = snapshot_task(target.id)
        getargs: Dict[str, Tuple[str, None]] = {"snapshot": (snapshot, None)}
        for role, name in zip(PAYLOAD_ROLES, payload_tasks(target)):
            getargs[f"payload_{role}"] = (name, None)
        execute, collect = execute_task(lane.id), collect_task(lane.id)
        yield {
            "basename": "execute",
            "name": lane.id,
            "doc": f"run the command of lane {lane.id}",
            "task_dep": [snapshot, *payload_tasks(target), *copy_tasks(target)],
            "getargs": getargs,
            "uptodate": [LaneUnchanged(self.session, target, lane)],
            "actions": [(self.actions.execute, [target, lane])],
            "clean": [(self.actions.clean_workspace, [lane])],
        }
        yield {
            "basename": "collect",
            "name": lane.id,
            "doc": f"collect logs and artifacts of lane {lane.id} into its run bundle",
            "task_dep": [execute],
            "getargs": {"execution": (execute, None)},
            "actions": [(self.actions.collect, [target, lane])],
        }
        yield {
            "basename": "lane",
            "name": lane.id,
            "doc": lane.description or f"lane {lane.id} ({target.id})",
            "task_dep": [collect],
            "getargs": {"collected": (collect, None)},
            "actions": [(self.actions.verdict, [lane])],
        }
