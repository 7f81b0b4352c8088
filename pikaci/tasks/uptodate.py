"""The up-to-date checks of the lane graph (doit `uptodate` callables).

Each keeps the reason of its last decision for `doit info`. `LaneUnchanged` also keeps the
decision itself (`decision`): the reporter reads it from the task when doit skips the lane, so
the reuse travels as an explicit value and nothing is written into the run by a check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

from doit.dependency import UptodateCalculator
from doit.task import Task

from pikaci.builder.transport import RemoteCommandError, TransportError
from pikaci.catalog import REALIZE_ON_BUILDER, Lane, Target
from pikaci.payloads import nix, realize
from pikaci.payloads.builder_nix import BuilderNixError
from pikaci.plan import (
    ReuseDecision,
    build_inputs,
    build_task,
    lane_inputs,
    lane_task,
    payload_tasks,
    reuse_decision,
    snapshot_task,
)
from pikaci.run.session import RunSession
from pikaci.snapshot import (
    SNAPSHOT_METADATA_FILE,
    SnapshotError,
    source_fingerprint,
)
from pikaci.store import RUN_FILE
from pikaci.tasks.common import BUILDER_ERRORS, target_filter
from pikaci.timestamps import is_run_id


class _Check(UptodateCalculator):  # type: ignore[misc]
    def values_of(self, task_name: str) -> Dict[str, Any]:
        """Another task's saved values ({} when it never ran)."""
        found = self.get_val(task_name, "_values_:")
        return found if isinstance(found, dict) else {}


class SnapshotUnchanged(_Check):
    """Up to date when the source fingerprint (git HEAD + dirty paths) is the one last copied.

    The fingerprint is saved with the task's values when the snapshot task runs.
    """

    def __init__(self, session: RunSession, target: Target) -> None:
        super().__init__()
        self.session = session
        self.target = target
        self.fingerprint: Optional[str] = None

    def __call__(self, task: Task, values: Dict[str, Any]) -> bool:
        settings = self.session.settings
        if settings.rerun is not None:
            return False  # a rerun pins the old snapshot; its action just reads it back
        git = self.session.git()
        try:
            self.fingerprint = source_fingerprint(
                settings.source_root, target_filter(self.session, self.target), git
            )
        except (SnapshotError, OSError, ValueError):
            # not up to date; the snapshot action meets the same problem and reports it
            self.fingerprint = None
            return False
        extra = {
            "source_fingerprint": self.fingerprint,
            "git_head": git.head if git else None,
            "git_dirty": git.dirty if git else None,
        }
        task.value_savers.append(lambda: extra)
        if self.fingerprint is None or values.get("source_fingerprint") != self.fingerprint:
            return False
        snapshot_dir = values.get("snapshot_dir")
        return (
            isinstance(snapshot_dir, str) and Path(snapshot_dir, SNAPSHOT_METADATA_FILE).is_file()
        )

    def __repr__(self) -> str:
        return f"source_fingerprint_unchanged({self.target.id}: {self.fingerprint})"


class LaneUnchanged(_Check):
    """Up to date when the lane passed last time with exactly these inputs."""

    def __init__(self, session: RunSession, target: Target, lane: Lane) -> None:
        super().__init__()
        self.session = session
        self.target = target
        self.lane = lane
        self.decision: Optional[ReuseDecision] = None

    def __call__(self, task: Task, values: Dict[str, Any]) -> bool:
        snapshot = self.values_of(snapshot_task(self.target.id))
        payloads = [self.values_of(name) for name in payload_tasks(self.target)]
        verdict = self.values_of(lane_task(self.lane.id)) if values else {}
        passed_run = verdict.get("run_id")
        # gc removes the evidence of a pass; only a run id names a run directory
        run_exists = (
            is_run_id(passed_run)
            and (self.session.state.runs_dir / str(passed_run) / RUN_FILE).is_file()
        )
        self.decision = reuse_decision(
            lane_inputs(self.lane, self.target, snapshot, payloads),
            verdict,
            rerun=self.session.settings.rerun is not None,
            run_exists=run_exists,
        )
        return self.decision.reusable

    def __repr__(self) -> str:
        reason = self.decision.reason if self.decision else "not evaluated"
        return f"lane_inputs_unchanged({self.lane.id}: {reason})"


class ClosureOnBuilder(_Check):
    """`upload:<payload>` is up to date when the builder has the whole closure of the built
    outputs: one local closure query, one batched query on the builder."""

    def __init__(self, session: RunSession, target: Target) -> None:
        super().__init__()
        self.session = session
        self.target = target
        self.reason = "not evaluated"

    def __call__(self, task: Task, values: Dict[str, Any]) -> bool:
        assert self.target.payloads is not None
        outputs = [self.values_of(name) for name in payload_tasks(self.target)]
        paths = [str(item.get("store_path", "")) for item in outputs]
        if not values or not all(paths) or values.get("paths") != paths:
            self.reason = "these outputs were never uploaded"
            return False
        log = self.session.payload_log(self.target.payloads.id, task.name, echo=False)
        try:
            builder = realize.require_builder(self.session.settings.builder, self.target)
            lacking = realize.builder_lacks(
                builder, nix.closure(paths, log), f"{task.name}: does the builder have it", log
            )
        except (*BUILDER_ERRORS, nix.NixError) as exc:
            self.reason = f"could not compare with the builder: {exc}"
            return False
        if lacking:
            self.reason = f"the builder lacks {len(lacking)} path(s)"
            return False
        self.reason = "the builder has the whole closure"
        return True

    def __repr__(self) -> str:
        return f"closure_on_builder({self.target.id}: {self.reason})"


class BuildUnchanged(_Check):
    """Up to date, without running nix, when the build's inputs are the ones that produced the
    recorded output and that store path is still on disk (store paths are immutable; a
    garbage-collected one is gone)."""

    def __init__(self, session: RunSession, target: Target, role: str) -> None:
        super().__init__()
        self.session = session
        self.target = target
        self.role = role
        self.reason = "not evaluated"

    def __call__(self, task: Task, values: Dict[str, Any]) -> bool:
        assert self.target.payloads is not None
        builder = self.session.settings.builder
        inputs = build_inputs(
            self.target,
            self.role,
            self.values_of(snapshot_task(self.target.id)),
            deps=self.values_of(build_task(self.target.payloads.id, "deps")),
            builder_store=f"{builder.host}:{builder.nix_store}" if builder else None,
            nix_path=os.environ.get("NIX_PATH", ""),
        )
        task.value_savers.append(lambda: {"inputs": inputs})  # saved when the build runs
        store_path = values.get("store_path")
        if values.get("inputs") != inputs:
            self.reason = "inputs changed" if values else "never built"
            return False
        if not isinstance(store_path, str):
            self.reason = "no recorded output"
            return False
        if self.target.realization == REALIZE_ON_BUILDER:
            return self._still_on_builder(task.name, store_path)
        if not Path(store_path).exists():
            self.reason = f"recorded output {store_path} is gone"
            return False
        self.reason = f"built {store_path} from the same inputs"
        return True

    def _still_on_builder(self, task_name: str, store_path: str) -> bool:
        assert self.target.payloads is not None
        log = self.session.payload_log(self.target.payloads.id, task_name, echo=False)
        try:
            lacking = realize.builder_lacks(
                realize.require_builder(self.session.settings.builder, self.target),
                [store_path],
                f"{task_name}: is the output still on the builder",
                log,
            )
        except (TransportError, RemoteCommandError, BuilderNixError) as exc:
            # the build action meets the same problem and reports it
            self.reason = f"could not ask the builder: {exc}"
            return False
        if lacking:
            self.reason = f"recorded output {store_path} is gone from the builder"
            return False
        self.reason = f"built {store_path} on the builder from the same inputs"
        return True

    def __repr__(self) -> str:
        payload_id = self.target.payloads.id if self.target.payloads else "?"
        return f"payload_inputs_unchanged({payload_id}:{self.role}: {self.reason})"


def reuse_decision_of(task: Task) -> Optional[ReuseDecision]:
    """The decision of an `execute:<lane>` task's lane check, once doit has asked it."""
    for check, _, _ in task.uptodate:
        if isinstance(check, LaneUnchanged):
            return check.decision
    return None
