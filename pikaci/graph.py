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
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import orjson
from doit.cmd_base import TaskLoader2
from doit.dependency import UptodateCalculator
from doit.exceptions import InvalidTask, TaskError, TaskFailed
from doit.loader import generate_tasks
from doit.task import Task

from pikaci.catalog import Catalog, CatalogError, Lane, Target
from pikaci.model import RUN_PASSED
from pikaci.runtimes import runtime_for
from pikaci.runtimes.base import Outcome
from pikaci.session import LaneInputs, RunSession, Settings
from pikaci.snapshot import (
    SNAPSHOT_METADATA_FILE,
    SnapshotError,
    SnapshotFilter,
    create_snapshot,
    read_metadata,
    source_fingerprint,
)

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


def lane_identity(lane: Lane, target: Target, content_hash: str) -> str:
    payload = {
        "version": IDENTITY_VERSION,
        "target": target.id,
        "content_hash": content_hash,
        "lane": lane.spec(),
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def read_metadata_exists(snapshot_dir: Path) -> bool:
    return (snapshot_dir / SNAPSHOT_METADATA_FILE).is_file()


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
        self.fingerprint = source_fingerprint(
            settings.source_root, snapshot_filter(self.target, settings), git
        )
        extra = {
            "source_fingerprint": self.fingerprint,
            "git_head": git.head if git else None,
            "git_dirty": git.dirty if git else None,
        }
        task.value_savers.append(lambda: extra)
        if self.fingerprint is None or values.get("source_fingerprint") != self.fingerprint:
            return False
        snapshot_dir = values.get("snapshot_dir")
        return isinstance(snapshot_dir, str) and read_metadata_exists(Path(snapshot_dir))

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
        content_hash = str(snapshot.get("content_hash", ""))
        identity = lane_identity(self.lane, self.target, content_hash)
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
            ),
        )
        if self.session.settings.rerun is not None:
            self.reason = "rerun of an earlier run"
            return False
        if not passed_before:
            self.reason = "no recorded pass (new, failed last time, or forgotten)"
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


# -- actions ----------------------------------------------------------------------------------


class TaskBuilder:
    def __init__(self, catalog: Catalog, session: RunSession) -> None:
        self.catalog = catalog
        self.session = session

    def tasks(self) -> Iterator[TaskDict]:
        for target in self.catalog.targets:
            yield self._snapshot_task(target)
            for lane in target.lanes:
                yield from self._lane_tasks(target, lane)
            yield {
                "basename": "target",
                "name": target.id,
                "doc": target.description or f"every lane of {target.id}",
                "task_dep": [f"lane:{lane.id}" for lane in target.lanes],
                "actions": None,
            }

    def _snapshot_task(self, target: Target) -> TaskDict:
        return {
            "basename": "snapshot",
            "name": target.id,
            "doc": f"filtered copy of the workspace for {target.id}, content-addressed",
            "actions": [(self._snapshot, [target])],
            "uptodate": [SnapshotUnchanged(self.session, target)],
            "clean": [(self._clean_snapshot, [target])],
        }

    def _lane_tasks(self, target: Target, lane: Lane) -> Iterator[TaskDict]:
        snapshot_task = f"snapshot:{target.id}"
        yield {
            "basename": "execute",
            "name": lane.id,
            "doc": f"run the command of lane {lane.id}",
            "task_dep": [snapshot_task],
            "getargs": {"snapshot": (snapshot_task, None)},
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
            return self._pinned_snapshot(settings.rerun.snapshot_dir)
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
        return {"content_hash": metadata.content_hash, "snapshot_dir": metadata.snapshot_dir}

    def _pinned_snapshot(self, snapshot_dir: str) -> Any:
        metadata = read_metadata(Path(snapshot_dir)) if snapshot_dir else None
        if metadata is None:
            return TaskError(
                f"cannot rerun: snapshot {snapshot_dir or '(none recorded)'} no longer exists"
            )
        return {"content_hash": metadata.content_hash, "snapshot_dir": metadata.snapshot_dir}

    def _execute(self, target: Target, lane: Lane, snapshot: Dict[str, Any]) -> Any:
        def run() -> Dict[str, Any]:
            ctx = self.session.job_context(target, lane, snapshot)
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
        }

    def task_dicts(self) -> List[TaskDict]:
        try:
            self.catalog.validate()
        except CatalogError as exc:
            raise InvalidTask(str(exc)) from None
        return list(TaskBuilder(self.catalog, self.session).tasks())

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
