"""The actions of the lane graph's tasks: snapshot, build, upload, execute, collect, verdict.

A failing lane command does not fail `execute` (its artifacts still have to be collected and
its runtime torn down); the verdict is `lane:<id>`, which fails when the lane failed. Values
pass between tasks as doit saved values (`getargs`): the snapshot's content hash and directory,
the builds' store paths and manifests, `execute`'s run id and outcome, `lane`'s identity.
"""

from __future__ import annotations

import shutil
import traceback
from pathlib import Path
from typing import Any, Callable, Dict

from doit.exceptions import TaskError, TaskFailed

from pikaci.catalog import REALIZE_COPY, REALIZE_ON_BUILDER, Lane, Target
from pikaci.model import RUN_PASSED
from pikaci.payloads import nix, realize
from pikaci.payloads.manifest import ManifestError, mount_sources, read_manifest
from pikaci.plan import (
    PAYLOAD_ROLES,
    build_node,
    build_task,
    lane_inputs,
    rerun_snapshot,
    snapshot_values,
    upload_task,
)
from pikaci.run.session import RunSession
from pikaci.runtimes import runtime_for
from pikaci.runtimes.base import Outcome
from pikaci.snapshot import SnapshotError, create_snapshot, read_metadata
from pikaci.store import atomic_symlink
from pikaci.tasks.common import BUILDER_ERRORS, target_filter

Values = Dict[str, Any]


class LaneActions:
    def __init__(self, session: RunSession) -> None:
        self.session = session

    # -- prepare ---------------------------------------------------------------------------

    def snapshot(self, target: Target) -> Any:
        settings = self.session.settings
        if settings.rerun is not None:
            return self._pinned_snapshot(rerun_snapshot(settings.rerun, target))
        try:
            metadata = create_snapshot(
                settings.source_root,
                self.session.state.snapshots_dir,
                target_filter(self.session, target),
                self.session.git(),
            )
        except (SnapshotError, OSError) as exc:
            return TaskError(f"snapshot of {target.id} failed: {exc}")
        self._point_target_at(target, metadata.snapshot_dir)
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

    def build(self, target: Target, role: str, snapshot: Values) -> Any:
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
            values = realize.mark_for_builder(values)
        self.session.record_realized(values)  # in prepared-outputs.json even if no lane runs
        return values

    def _build_on_builder(
        self, target: Target, role: str, snapshot: Values, log: Callable[[str], None]
    ) -> Any:
        assert target.payloads is not None
        task_name = build_task(target.payloads.id, role)
        run = self.session.run
        try:
            values = realize.build_on_builder(
                realize.require_builder(self.session.settings.builder, target),
                target,
                role,
                snapshot,
                run.run_id if run else "",
                self.session.record_upload,
                log,
            )
        except BUILDER_ERRORS as exc:
            log(f"failed: {exc}")
            # never a silent fallback to building here and copying
            return TaskError(f"{task_name} (target {target.id}, on the builder): {exc}")
        self.session.record_realized(values)
        return values

    def upload(self, target: Target, deps: Values, build: Values) -> Any:
        assert target.payloads is not None
        payload_id = target.payloads.id
        log = self.session.payload_log(payload_id, upload_task(payload_id))
        try:
            return realize.upload_payloads(
                realize.require_builder(self.session.settings.builder, target),
                payload_id,
                [deps, build],
                self.session.record_upload,
                log,
            )
        except (*BUILDER_ERRORS, nix.NixError) as exc:
            log(f"failed: {exc}")
            return TaskError(f"{upload_task(payload_id)} (target {target.id}): {exc}")

    # -- lanes -----------------------------------------------------------------------------

    def execute(self, target: Target, lane: Lane, snapshot: Values, **payloads: Any) -> Any:
        outputs = [
            payloads[f"payload_{role}"] for role in PAYLOAD_ROLES if payloads.get(f"payload_{role}")
        ]

        def run() -> Values:
            inputs = lane_inputs(lane, target, snapshot, outputs)
            ctx = self.session.job_context(target, lane, snapshot, outputs)
            self.session.job_started(ctx, inputs)
            outcome = runtime_for(lane.execution).execute(ctx)
            self.session.job_outcome(lane, outcome)
            return {
                "run_id": ctx.run_id,
                "identity": inputs.identity,
                "snapshot_dir": str(ctx.snapshot_dir),
                "content_hash": ctx.content_hash,
                "status": outcome.status,
                "exit_code": outcome.exit_code,
                "message": outcome.message,
            }

        return self._guarded(target, lane, "execute", run)

    def collect(self, target: Target, lane: Lane, execution: Values) -> Any:
        run = self.session.run
        if run is None or execution.get("run_id") != run.run_id:
            return dict(execution)  # collected by the run that executed it

        def body() -> Values:
            ctx = self.session.job_context(target, lane, execution)
            outcome = Outcome(
                status=execution["status"],
                exit_code=execution.get("exit_code"),
                message=str(execution.get("message", "")),
            )
            final = runtime_for(lane.execution).collect(ctx, outcome)
            job = self.session.job_finished(lane, final)
            return {**execution, "status": job.status, "message": job.message}

        return self._guarded(target, lane, "collect", body)

    def verdict(self, lane: Lane, collected: Values) -> Any:
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

    def _guarded(self, target: Target, lane: Lane, step: str, body: Callable[[], Values]) -> Any:
        """Run a step; an orchestrator error fails the job with a one-line reason."""
        try:
            with self.session.step():
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

    # -- `doit clean` ----------------------------------------------------------------------

    def clean_snapshot(self, target: Target) -> None:
        link = self._target_link(target)
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)
            link.unlink()

    def clean_workspace(self, lane: Lane) -> None:
        shutil.rmtree(self.session.state.host_local_dir(lane.id), ignore_errors=True)

    def _target_link(self, target: Target) -> Path:
        """`cache/snapshots/by-target/<id>` names the target's current snapshot (for clean,
        people)."""
        return self.session.state.snapshots_dir / "by-target" / target.id

    def _point_target_at(self, target: Target, snapshot_dir: str) -> None:
        atomic_symlink(self._target_link(target), snapshot_dir)
