"""Catalog -> doit task graph, and the doit loader used by `dodo.py` and the `pikaci` script.

Per target `snapshot:<target>`; per lane `execute:<lane>` -> `collect:<lane>` -> `lane:<lane>`;
per target `target:<target>` over its lanes. Identities travel as saved values: the snapshot
task saves the content hash and directory, `execute` its run id and outcome, `lane` the
identity that passed. `execute` is up to date exactly when the lane's identity (snapshot
content hash + lane spec) equals the identity of its last pass, so an unchanged lane that
passed is reused, a failed lane always reruns, and `doit forget lane:<id>` forces a run.

A failing lane command does not fail `execute` (its artifacts still have to be collected and
its runtime torn down); the verdict is `lane:<id>`, which fails when the lane failed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import orjson
from doit.cmd_base import TaskLoader2
from doit.dependency import UptodateCalculator
from doit.exceptions import InvalidTask, TaskError, TaskFailed
from doit.loader import generate_tasks
from doit.task import Task

from pikaci import builder_payloads, nix
from pikaci.builder_nix import BuilderNixError
from pikaci.catalog import (
    REALIZE_COPY,
    REALIZE_LOCAL,
    REALIZE_ON_BUILDER,
    Catalog,
    CatalogError,
    Lane,
    Target,
)
from pikaci.forge_tasks import forge_tasks, is_ci_task
from pikaci.incus_tasks import (
    INCUS_IMAGE_TASK,
    INCUS_REAP_TASK,
    incus_image_task,
    incus_reap_task,
)
from pikaci.model import RUN_PASSED, RunRecord
from pikaci.nodes import PAYLOAD_ROLES, build_node, build_task, upload_task
from pikaci.payload import ManifestError, mount_sources, read_manifest
from pikaci.remote import RemoteError
from pikaci.runtimes import runtime_for
from pikaci.runtimes.base import Outcome
from pikaci.server.serve import SERVE_TASK, serve_task
from pikaci.session import LaneInputs, RunSession, Settings
from pikaci.snapshot import (
    SNAPSHOT_METADATA_FILE,
    SnapshotError,
    SnapshotFilter,
    SnapshotMetadata,
    create_snapshot,
    read_metadata,
    source_fingerprint,
)
from pikaci.store import StateRoot
from pikaci.transport import RemoteCommandError, TransportError

IDENTITY_VERSION = 1
TaskDict = Dict[str, Any]


def snapshot_filter(target: Target, settings: Settings) -> SnapshotFilter:
    """The target's copy filter, plus the state root when it sits inside the source tree."""
    excludes = list(target.snapshot_excludes)
    try:
        inside = settings.state_root.resolve().relative_to(settings.source_root.resolve())
    except ValueError:
        inside = None
    if inside is not None and str(inside) not in (".", ".pikaci"):
        excludes.append("/" + inside.as_posix())
    return SnapshotFilter(extra_excludes=tuple(excludes))


def snapshot_identity(values: Dict[str, Any]) -> str:
    """The snapshot as a lane sees it: content and executable bits (`tree_id`)."""
    return str(values.get("tree_id") or values.get("content_hash") or "")


def lane_identity(
    lane: Lane, target: Target, snapshot_id: str, payload_paths: Sequence[str] = ()
) -> str:
    payload = {
        "version": IDENTITY_VERSION,
        "target": target.id,
        "snapshot": snapshot_id,
        "payloads": list(payload_paths),
        "lane": lane.spec(),
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


# -- up-to-date checks ------------------------------------------------------------------------


class SnapshotUnchanged(UptodateCalculator):  # type: ignore[misc]
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
                settings.source_root, snapshot_filter(self.target, settings), git
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


class LaneUnchanged(UptodateCalculator):  # type: ignore[misc]
    """Up to date when the lane passed last time with exactly these inputs."""

    def __init__(self, session: RunSession, target: Target, lane: Lane) -> None:
        super().__init__()
        self.session = session
        self.target = target
        self.lane = lane
        self.reason = "not evaluated"

    def __call__(self, task: Task, values: Dict[str, Any]) -> bool:
        snapshot = self._values(f"snapshot:{self.target.id}")
        verdict = self._values(f"lane:{self.lane.id}")
        payloads = [self._values(name) for name in payload_tasks(self.target)]
        content_hash = str(snapshot.get("content_hash", ""))
        paths = [str(values.get("store_path", "")) for values in payloads]
        identity = lane_identity(self.lane, self.target, snapshot_identity(snapshot), paths)
        passed_before = verdict.get("status") == RUN_PASSED and bool(values)
        self.session.note_inputs(
            self.lane.id,
            LaneInputs(
                snapshot_dir=str(snapshot.get("snapshot_dir", "")),
                content_hash=content_hash,
                identity=identity,
                last_passed_run=verdict.get("run_id") if passed_before else None,
                git_head=snapshot.get("git_head"),
                git_dirty=snapshot.get("git_dirty"),
                payloads=[values for values in payloads if values],
            ),
        )
        if self.session.settings.rerun is not None:
            self.reason = "rerun of an earlier run"
            return False
        if not passed_before:
            self.reason = "no recorded pass (new, failed last time, or forgotten)"
            return False
        evidence = self.session.state.runs_dir / str(verdict.get("run_id"))
        if not (evidence / "run.json").is_file():
            self.reason = f"the run that passed ({verdict.get('run_id')}) is gone (gc)"
            return False
        if verdict.get("identity") != identity:
            self.reason = f"inputs changed: identity {identity[:12]} != {verdict.get('identity')}"
            return False
        self.reason = f"passed in run {verdict.get('run_id')} with identity {identity[:12]}"
        return True

    def _values(self, task_name: str) -> Dict[str, Any]:
        found = self.get_val(task_name, "_values_:")
        return found if isinstance(found, dict) else {}

    def __repr__(self) -> str:
        return f"lane_inputs_unchanged({self.lane.id}: {self.reason})"


_BUILDER_ERRORS = (TransportError, RemoteCommandError, RemoteError, BuilderNixError, ManifestError)


class ClosureOnBuilder(UptodateCalculator):  # type: ignore[misc]
    """`upload:<payload>` is up to date when the builder has the whole closure of the built
    outputs: one local closure query, one batched query on the builder."""

    def __init__(self, session: RunSession, target: Target) -> None:
        super().__init__()
        self.session = session
        self.target = target
        self.reason = "not evaluated"

    def __call__(self, task: Task, values: Dict[str, Any]) -> bool:
        assert self.target.payloads is not None
        outputs = [self.get_val(name, "_values_:") or {} for name in payload_tasks(self.target)]
        paths = [str(item.get("store_path", "")) for item in outputs]
        if not values or not all(paths) or values.get("paths") != paths:
            self.reason = "these outputs were never uploaded"
            return False
        log = self.session.payload_log(self.target.payloads.id, task.name, echo=False)
        try:
            builder = builder_payloads.require_builder(self.session.settings.builder, self.target)
            lacking = builder_payloads.builder_lacks(
                builder, nix.closure(paths, log), f"{task.name}: does the builder have it", log
            )
        except (*_BUILDER_ERRORS, nix.NixError) as exc:
            self.reason = f"could not compare with the builder: {exc}"
            return False
        if lacking:
            self.reason = f"the builder lacks {len(lacking)} path(s)"
            return False
        self.reason = "the builder has the whole closure"
        return True

    def __repr__(self) -> str:
        return f"closure_on_builder({self.target.id}: {self.reason})"


class BuildUnchanged(UptodateCalculator):  # type: ignore[misc]
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
        builder = self.session.settings.builder
        inputs = build_inputs(self.target, self.role, self.get_val, builder)
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
        builder = self.session.settings.builder
        log = self.session.payload_log(self.target.payloads.id, task_name, echo=False)
        try:
            lacking = builder_payloads.builder_lacks(
                builder_payloads.require_builder(builder, self.target),
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


def payload_tasks(target: Target) -> List[str]:
    if target.payloads is None:
        return []
    return [build_task(target.payloads.id, role) for role in PAYLOAD_ROLES]


def copy_tasks(target: Target) -> List[str]:
    """`upload:<payload>` when the target's payloads are copied to the builder."""
    if target.payloads is None or target.realization != REALIZE_COPY:
        return []
    return [upload_task(target.payloads.id)]


def build_inputs(
    target: Target, role: str, get_val: Callable[[str, str], Any], builder: Optional[Any] = None
) -> str:
    """Digest of what a payload build depends on: the snapshot (nix files and lock files live
    in it), the installable, where it is built, and for the build payload the deps output it
    builds on."""
    assert target.payloads is not None
    ref = getattr(target.payloads, role)
    snapshot = get_val(f"snapshot:{target.id}", "_values_:") or {}
    parts: Dict[str, Any] = {
        "version": IDENTITY_VERSION,
        "snapshot": snapshot_identity(snapshot),
        "attr": ref.attr,
        "file": ref.file,
        # a classic file may import from search paths (<nixpkgs>) outside the snapshot
        "nix_path": os.environ.get("NIX_PATH", "") if ref.file is not None else "",
    }
    if target.realization != REALIZE_LOCAL:
        parts["realize"] = target.realization
    if target.realization == REALIZE_ON_BUILDER and builder is not None:
        parts["builder"] = f"{builder.host}:{builder.nix_store}"
    if role == "build":
        deps = get_val(build_task(target.payloads.id, "deps"), "_values_:") or {}
        parts["deps"] = deps.get("store_path")
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


# -- actions ----------------------------------------------------------------------------------


GC_REMOTE_TASK = "gc_remote"  # never a default task: plain `doit` must not delete anything
# housekeeping tasks: in every task list, run only when named
MAINTENANCE_TASKS = (GC_REMOTE_TASK, INCUS_IMAGE_TASK, INCUS_REAP_TASK, SERVE_TASK)

GROUP_DOCS = {
    "lane": "every lane: `lane:<id>` is one lane's verdict (doit list --all shows them)",
    "target": "every target: `target:<id>` runs the lanes of one target",
    "snapshot": "filtered, content-addressed copies of the workspace, one per target",
    "build": "nix builds of staged payloads: `build:<payload>:deps|build`",
    "upload": "nix copy of staged payload closures to the builder: `upload:<payload>`",
    "execute": "run lane commands in their runtime",
    "collect": "collect lane logs and artifacts into the run bundle",
}


class TaskBuilder:
    def __init__(self, catalog: Catalog, session: RunSession) -> None:
        self.catalog = catalog
        self.session = session

    def tasks(self) -> Iterator[TaskDict]:
        # doc lines of the group tasks `doit list` shows (name=None describes the group)
        shown = {
            "build": any(target.payloads for target in self.catalog.targets),
            "upload": any(copy_tasks(target) for target in self.catalog.targets),
        }
        for basename, doc in GROUP_DOCS.items():
            if shown.get(basename, True):
                yield {"basename": basename, "name": None, "doc": doc}
        yield self._gc_remote_task()
        yield incus_image_task()
        yield incus_reap_task()
        settings = self.session.settings
        yield serve_task(settings.source_root, StateRoot(settings.state_root))
        yield from forge_tasks(self.catalog, self.session.settings)
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
                "task_dep": [f"lane:{lane.id}" for lane in target.lanes],
                "actions": None,
            }

    def _gc_remote_task(self) -> TaskDict:
        """Builder maintenance: in every task list, in no target or lane, run only when named."""
        from pikaci.cli import remote_gc

        return {
            "basename": GC_REMOTE_TASK,
            "doc": "remove old runs and unused snapshots from the builder ($PIKACI_BUILDER); "
            "--keep-runs N, --keep-snapshots-days D",
            "params": [
                {
                    "name": "keep_runs",
                    "long": "keep-runs",
                    "type": int,
                    "default": remote_gc.DEFAULT_KEEP_RUNS,
                    "help": remote_gc.KEEP_RUNS_HELP,
                },
                {
                    "name": "keep_snapshots_days",
                    "long": "keep-snapshots-days",
                    "type": float,
                    "default": remote_gc.DEFAULT_KEEP_SNAPSHOTS_DAYS,
                    "help": remote_gc.KEEP_SNAPSHOTS_DAYS_HELP,
                },
            ],
            "actions": [self._gc_remote],
            "uptodate": [False],
            "verbosity": 2,  # the report is the point of running it
        }

    def _gc_remote(self, keep_runs: int, keep_snapshots_days: float) -> Any:
        from pikaci.cli import remote_gc

        builder = self.session.settings.builder
        if builder is None:
            return TaskError("gc_remote: no builder is configured (set PIKACI_BUILDER)")
        try:
            remote_gc.gc_remote_command(builder, keep_runs, keep_snapshots_days, False, sys.stdout)
        except (ValueError, *remote_gc.REMOTE_GC_ERRORS) as exc:
            return TaskError(str(exc))
        return None

    def _snapshot_task(self, target: Target) -> TaskDict:
        return {
            "basename": "snapshot",
            "name": target.id,
            "doc": f"filtered copy of the workspace for {target.id}, content-addressed",
            "actions": [(self._snapshot, [target])],
            "uptodate": [SnapshotUnchanged(self.session, target)],
            "clean": [(self._clean_snapshot, [target])],
        }

    def _build_tasks(self, target: Target) -> Iterator[TaskDict]:
        assert target.payloads is not None
        snapshot_task = f"snapshot:{target.id}"
        for role in PAYLOAD_ROLES:
            name = build_task(target.payloads.id, role)
            deps = [snapshot_task]
            if role == "build":
                deps.append(build_task(target.payloads.id, "deps"))
            yield {
                "basename": "build",
                "name": name.split(":", 1)[1],
                "doc": f"nix build of the staged workspace-{role} payload `{target.payloads.id}`",
                "task_dep": deps,
                "getargs": {"snapshot": (snapshot_task, None)},
                "uptodate": [BuildUnchanged(self.session, target, role)],
                "actions": [(self._build, [target, role])],
            }
        if target.realization == REALIZE_COPY:
            yield self._upload_task(target)

    def _upload_task(self, target: Target) -> TaskDict:
        assert target.payloads is not None
        payload_id = target.payloads.id
        builds = [build_task(payload_id, role) for role in PAYLOAD_ROLES]
        return {
            "basename": "upload",
            "name": payload_id,
            "doc": f"nix copy of payload `{payload_id}`'s closure to the builder",
            "task_dep": builds,
            "getargs": {role: (name, None) for role, name in zip(PAYLOAD_ROLES, builds)},
            "uptodate": [ClosureOnBuilder(self.session, target)],
            "actions": [(self._upload, [target])],
        }

    def _lane_tasks(self, target: Target, lane: Lane) -> Iterator[TaskDict]:
        snapshot_task = f"snapshot:{target.id}"
        getargs: Dict[str, Tuple[str, None]] = {"snapshot": (snapshot_task, None)}
        for role, name in zip(PAYLOAD_ROLES, payload_tasks(target)):
            getargs[f"payload_{role}"] = (name, None)
        yield {
            "basename": "execute",
            "name": lane.id,
            "doc": f"run the command of lane {lane.id}",
            "task_dep": [snapshot_task, *payload_tasks(target), *copy_tasks(target)],
            "getargs": getargs,
            "uptodate": [LaneUnchanged(self.session, target, lane)],
            "actions": [(self._execute, [target, lane])],
            "clean": [(self._clean_workspace, [lane])],
        }
        yield {
            "basename": "collect",
            "name": lane.id,
            "doc": f"collect logs and artifacts of lane {lane.id} into its run bundle",
            "task_dep": [f"execute:{lane.id}"],
            "getargs": {"execution": (f"execute:{lane.id}", None)},
            "actions": [(self._collect, [target, lane])],
        }
        yield {
            "basename": "lane",
            "name": lane.id,
            "doc": lane.description or f"lane {lane.id} ({target.id})",
            "task_dep": [f"collect:{lane.id}"],
            "getargs": {"collected": (f"collect:{lane.id}", None)},
            "actions": [(self._verdict, [lane])],
        }

    def _snapshot(self, target: Target) -> Any:
        settings = self.session.settings
        if settings.rerun is not None:
            return self._pinned_snapshot(rerun_snapshot(settings.rerun, target))
        try:
            metadata = create_snapshot(
                settings.source_root,
                self.session.state.snapshots_dir,
                snapshot_filter(target, settings),
                self.session.git(),
            )
        except (SnapshotError, OSError) as exc:
            return TaskError(f"snapshot of {target.id} failed: {exc}")
        _point_target_at(self.session, target, metadata.snapshot_dir)
        self.session.console(
            f"[pikaci] snapshot {target.id}: {metadata.content_hash[:12]} "
            f"at {metadata.snapshot_dir}"
        )
        return snapshot_values(metadata)

    def _pinned_snapshot(self, snapshot_dir: str) -> Any:
        metadata = read_metadata(Path(snapshot_dir)) if snapshot_dir else None
        if metadata is None:
            return TaskError(
                f"cannot rerun: snapshot {snapshot_dir or '(none recorded)'} no longer exists"
            )
        return snapshot_values(metadata)

    def _build(self, target: Target, role: str, snapshot: Dict[str, Any]) -> Any:
        assert target.payloads is not None
        payload_id = target.payloads.id
        task_name = build_task(payload_id, role)
        ref = getattr(target.payloads, role)
        source = Path(snapshot["snapshot_dir"])
        log = self.session.payload_log(payload_id, task_name)
        if target.realization == REALIZE_ON_BUILDER:
            return self._build_on_builder(target, role, snapshot, log)
        try:
            paths = nix.build(nix.BuildRef(ref.attr, ref.file), source, log)
            store_path = paths[0]
            label = f"{task_name} ({store_path})"
            manifest = read_manifest(Path(store_path), label)
            mount_sources(Path(store_path), manifest, label)  # every mount must resolve
        except (nix.NixError, ManifestError) as exc:
            log(f"failed: {exc}")
            return TaskError(f"{task_name} (target {target.id}): {exc}")
        log(f"staged output ready: {ref.attr} -> {store_path}")
        values = {
            "role": role,
            "node_id": build_node(payload_id, role),
            "installable": nix.BuildRef(ref.attr, ref.file).describe(source),
            "output_name": ref.attr,
            "store_path": store_path,
            "manifest": manifest.to_dict(),
        }
        if target.realization == REALIZE_COPY:
            values = builder_payloads.mark_for_builder(values)
        self.session.record_realized(values)  # in prepared-outputs.json even if no lane runs
        return values

    def _build_on_builder(
        self, target: Target, role: str, snapshot: Dict[str, Any], log: Callable[[str], None]
    ) -> Any:
        assert target.payloads is not None
        task_name = build_task(target.payloads.id, role)
        run = self.session.run
        try:
            values = builder_payloads.build_on_builder(
                builder_payloads.require_builder(self.session.settings.builder, target),
                target,
                role,
                snapshot,
                run.run_id if run else "",
                self.session.record_upload,
                log,
            )
        except _BUILDER_ERRORS as exc:
            log(f"failed: {exc}")
            # never a silent fallback to building here and copying
            return TaskError(f"{task_name} (target {target.id}, on the builder): {exc}")
        self.session.record_realized(values)
        return values

    def _upload(self, target: Target, deps: Dict[str, Any], build: Dict[str, Any]) -> Any:
        assert target.payloads is not None
        payload_id = target.payloads.id
        log = self.session.payload_log(payload_id, upload_task(payload_id))
        try:
            return builder_payloads.upload_payloads(
                builder_payloads.require_builder(self.session.settings.builder, target),
                payload_id,
                [deps, build],
                self.session.record_upload,
                log,
            )
        except (*_BUILDER_ERRORS, nix.NixError) as exc:
            log(f"failed: {exc}")
            return TaskError(f"{upload_task(payload_id)} (target {target.id}): {exc}")

    def _execute(
        self, target: Target, lane: Lane, snapshot: Dict[str, Any], **payloads: Any
    ) -> Any:
        def role_given(role: str) -> bool:
            return bool(payloads.get(f"payload_{role}"))

        def run() -> Dict[str, Any]:
            outputs = [payloads[f"payload_{role}"] for role in PAYLOAD_ROLES if role_given(role)]
            ctx = self.session.job_context(target, lane, snapshot, outputs)
            self.session.job_started(ctx)
            outcome = runtime_for(lane.execution).execute(ctx)
            self.session.job_outcome(lane, outcome)
            inputs = self.session.inputs.get(lane.id)
            return {
                "run_id": ctx.run_id,
                "identity": inputs.identity if inputs else None,
                "snapshot_dir": str(ctx.snapshot_dir),
                "content_hash": ctx.content_hash,
                "status": outcome.status,
                "exit_code": outcome.exit_code,
                "message": outcome.message,
            }

        return self._guarded(target, lane, "execute", run)

    def _collect(self, target: Target, lane: Lane, execution: Dict[str, Any]) -> Any:
        if not self._executed_here(execution):
            return dict(execution)  # collected by the run that executed it

        def run() -> Dict[str, Any]:
            ctx = self.session.job_context(target, lane, execution)
            outcome = Outcome(
                status=execution["status"],
                exit_code=execution.get("exit_code"),
                message=str(execution.get("message", "")),
            )
            final = runtime_for(lane.execution).collect(ctx, outcome)
            job = self.session.job_finished(lane, final)
            return {**execution, "status": job.status, "message": job.message}

        return self._guarded(target, lane, "collect", run)

    def _executed_here(self, values: Dict[str, Any]) -> bool:
        run = self.session.run
        return run is not None and values.get("run_id") == run.run_id

    def _verdict(self, lane: Lane, collected: Dict[str, Any]) -> Any:
        if collected.get("status") != RUN_PASSED:
            return TaskFailed(
                f"lane {lane.id} failed: {collected.get('message')} "
                f"(run {collected.get('run_id')}; `pikaci logs {collected.get('run_id')} "
                f"--job {lane.id}`)"
            )
        return {
            "status": RUN_PASSED,
            "identity": collected.get("identity"),
            "run_id": collected.get("run_id"),
        }

    def _guarded(
        self, target: Target, lane: Lane, step: str, body: Callable[[], Dict[str, Any]]
    ) -> Any:
        """Run a step; an orchestrator error fails the job with a one-line reason."""
        try:
            return body()
        except (KeyboardInterrupt, SystemExit):
            run = self.session.run
            reason = run.interrupted if run and run.interrupted else "interrupt"
            self.session.job_failed(target, lane, f"interrupted by {reason}")
            raise
        except Exception as exc:
            message = f"{step} failed: {type(exc).__name__}: {exc}".splitlines()[0]
            try:
                self.session.job_failed(target, lane, message, traceback.format_exc())
            except Exception:
                pass  # the record could not be written; doit still reports the error
            return TaskError(message)

    def _clean_snapshot(self, target: Target) -> None:
        link = self.session.state.snapshots_dir / "by-target" / target.id
        _remove_tree_behind(link)

    def _clean_workspace(self, lane: Lane) -> None:
        shutil.rmtree(self.session.state.host_local_dir(lane.id), ignore_errors=True)


def rerun_snapshot(old: RunRecord, target: Target) -> str:
    """The snapshot the old run used for `target` (runs spanning targets record one per job)."""
    for job in old.jobs:
        if job.target_id == target.id and job.snapshot_dir:
            return job.snapshot_dir
    return old.snapshot_dir


def snapshot_values(metadata: SnapshotMetadata) -> Dict[str, Any]:
    """The snapshot task's result: what lanes and builds depend on, nothing circumstantial."""
    return {
        "content_hash": metadata.content_hash,
        "tree_id": metadata.identity,
        "snapshot_dir": metadata.snapshot_dir,
    }


def _point_target_at(session: RunSession, target: Target, snapshot_dir: str) -> None:
    """`cache/snapshots/by-target/<id>` names the target's current snapshot (for clean, people)."""
    link = session.state.snapshots_dir / "by-target" / target.id
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{target.id}.{os.getpid()}.tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(snapshot_dir)
    tmp.replace(link)


def _remove_tree_behind(link: Path) -> None:
    if not link.is_symlink():
        return
    shutil.rmtree(link.resolve(), ignore_errors=True)
    link.unlink()


# -- the loader -------------------------------------------------------------------------------


class CatalogLoader(TaskLoader2):  # type: ignore[misc]
    """doit's loader for a pikaci catalog: the same tasks and config for every entry point."""

    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        super().__init__()
        self.catalog = catalog
        self.session = RunSession(catalog, settings)
        self._task_dicts: Optional[List[TaskDict]] = None

    def setup(self, opt_values: Dict[str, Any]) -> None:
        pass

    def load_doit_config(self) -> Dict[str, Any]:
        from pikaci.reporter import reporter_for

        state_root = self.session.state.root
        state_root.mkdir(parents=True, exist_ok=True)
        dep_file = self.session.settings.dep_file or self.session.state.dep_file
        return {
            "backend": "sqlite3",
            "dep_file": str(dep_file),
            "reporter": reporter_for(self.session),
            "par_type": "thread",
            "default_tasks": self._default_tasks(),
        }

    def _default_tasks(self) -> Optional[List[str]]:
        """Every task but the housekeeping ones, in order: what plain `doit` would otherwise
        run."""
        try:
            dicts = self.task_dicts()
        except InvalidTask:
            return None  # loading the tasks reports the problem
        names = (
            item["basename"] if item.get("name") is None else f"{item['basename']}:{item['name']}"
            for item in dicts
        )
        return [name for name in names if name not in MAINTENANCE_TASKS and not is_ci_task(name)]

    def task_dicts(self) -> List[TaskDict]:
        """The tasks, built once: the config's default tasks and doit's task load both need them.

        Copies, one level deep: doit pops and rewrites keys of the dicts it is handed.
        """
        if self._task_dicts is None:
            try:
                self.catalog.validate()
            except CatalogError as exc:
                raise InvalidTask(str(exc)) from None
            self._task_dicts = list(TaskBuilder(self.catalog, self.session).tasks())
        return [
            {key: list(value) if isinstance(value, list) else value for key, value in item.items()}
            for item in self._task_dicts
        ]

    def load_tasks(self, cmd: Any, pos_args: List[str]) -> List[Task]:
        task_dicts = self.task_dicts()
        tasks: List[Task] = generate_tasks("pikaci", (item for item in task_dicts))
        return tasks


def declare(catalog: Catalog, dodo_file: str) -> Tuple[Dict[str, Any], Callable[[], Any]]:
    """For a repository's `dodo.py`: `DOIT_CONFIG, task_pikaci = declare(CATALOG, __file__)`."""
    from pikaci.settings import settings_from_environment

    source_root = Path(dodo_file).resolve().parent
    problem: Optional[str] = None
    try:
        settings = settings_from_environment(source_root)
    except ValueError as exc:
        # reported when doit asks for the tasks: an import-time error would be a traceback
        problem = str(exc)
        settings = settings_from_environment(source_root, output="human")
    loader = CatalogLoader(catalog, settings)

    def task_pikaci() -> Iterator[TaskDict]:
        if problem is not None:
            raise InvalidTask(problem)
        yield from loader.task_dicts()

    task_pikaci.__doc__ = "pikaci lanes"
    return loader.load_doit_config(), task_pikaci
