"""One orchestrator invocation: its run record, job transitions, events and interruption.

The doit reporter opens the run (`begin`) when the selected tasks include lanes and closes it
(`finish`); the task actions move their own job through `running` to its verdict. Every
transition rewrites `jobs/<job>/status.json` and `run.json` atomically under the run's lock
and, in `jsonl` mode, prints one lifecycle event on stdout.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

from pikaci import forge
from pikaci.catalog import REALIZE_COPY, REALIZE_ON_BUILDER, Catalog, Lane, Target
from pikaci.gitinfo import GitState, git_state
from pikaci.model import (
    RUN_FAILED,
    RUN_PASSED,
    RUN_RUNNING,
    RUN_SKIPPED,
    Exposure,
    JobRecord,
    PlanNode,
    PreparedOutputsRecord,
    PrepareTiming,
    RemoteLinuxVmExecution,
    RunPlanRecord,
    RunRecord,
    UploadRecord,
    dumps_line,
    dumps_pretty,
    duration_ms,
    job_event,
    new_run_id,
    now_timestamp,
    run_finished_event,
    run_started_event,
)
from pikaci.nodes import (
    PAYLOAD_ROLES,
    build_node,
    execute_node,
    payload_owners,
    prepare_nodes,
    snapshot_node,
    upload_node,
)
from pikaci.runtimes.base import (
    RESIDENCY_BUILDER,
    RESIDENCY_LOCAL,
    HostLog,
    JobContext,
    Outcome,
    StagedOutput,
)
from pikaci.runtimes.process import kill_process_group
from pikaci.store import (
    GUEST_LOG,
    HOST_LOG,
    PLAN_FILE,
    PREPARED_OUTPUTS_FILE,
    RunWriter,
    StateRoot,
    write_json,
)
from pikaci.transport import Builder

OUTPUT_MODES = ("human", "json", "jsonl")
ENV_OUTPUT = "PIKACI_OUTPUT"
_SIGNAL_NAMES: Dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


@dataclass
class Settings:
    source_root: Path
    state_root: Path
    output: str = "human"
    rerun: Optional[RunRecord] = None  # the run being re-executed, with its snapshot
    dep_file: Optional[Path] = None  # defaults to the state root's doit.sqlite3
    builder: Optional[Builder] = None  # where `remote_ssh` lanes run

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_MODES:
            raise ValueError(
                f"invalid output mode {self.output!r} (expected one of {', '.join(OUTPUT_MODES)})"
            )


@dataclass
class LaneInputs:
    """What a lane's identity is made of, as seen by its up-to-date check."""

    snapshot_dir: str
    content_hash: str
    identity: str
    last_passed_run: Optional[str]
    git_head: Optional[str] = None
    git_dirty: Optional[bool] = None
    payloads: List[Dict[str, Any]] = field(default_factory=list)  # build tasks' saved values


@dataclass
class _PlannedJob:
    target: Target
    lane: Lane
    # the job's latest record as this process wrote it (None until the job starts); the
    # single source of truth for transitions, so nothing re-reads status.json
    record: Optional[JobRecord] = None


@dataclass
class _RunState:
    run_id: str
    writer: RunWriter
    jobs: Dict[str, _PlannedJob]
    active: contextlib.ExitStack
    prepare_ms: Dict[str, int] = field(default_factory=dict)  # node id -> duration
    failed_prepares: Dict[str, str] = field(default_factory=dict)  # node id -> message
    failed_lanes: List[str] = field(default_factory=list)
    process_groups: Dict[str, int] = field(default_factory=dict)
    interrupted: Optional[str] = None
    finishing: bool = False
    final: Optional[RunRecord] = None
    snapshot_adopted: bool = False
    # reused jobs and run changes not yet written: folded into the next run.json write
    pending: List[JobRecord] = field(default_factory=list)
    pending_changes: List[Callable[[RunRecord], None]] = field(default_factory=list)
    background: List[Future[None]] = field(default_factory=list)


class RunSession:
    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.catalog = catalog
        self.owners = payload_owners(catalog)
        self.settings = settings
        self.state = StateRoot(settings.state_root)
        self.inputs: Dict[str, LaneInputs] = {}
        self.run: Optional[_RunState] = None
        self._lock = threading.RLock()
        self._git: Optional[GitState] = None
        self._git_read = False
        # captured now: doit swaps sys.stdout while actions run
        self._stdout: IO[str] = sys.stdout
        self._stderr: IO[str] = sys.stderr
        self._previous_handlers: Dict[int, Any] = {}
        self._pool: Optional[ThreadPoolExecutor] = None

    def _writer(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pikaci-records")
            return self._pool

    # -- shared inputs ---------------------------------------------------------------------

    def git(self) -> Optional[GitState]:
        """Git state of the source root, read once per invocation."""
        with self._lock:
            if not self._git_read:
                self._git = git_state(self.settings.source_root)
                self._git_read = True
            return self._git

    @property
    def console_stream(self) -> IO[str]:
        return self._stdout if self.settings.output == "human" else self._stderr

    def console(self, line: str) -> None:
        with self._lock:
            stream = self.console_stream
            stream.write(line + "\n")
            stream.flush()

    def _emit(self, event: Dict[str, Any]) -> None:
        if self.settings.output != "jsonl":
            return
        with self._lock:
            self._stdout.write(dumps_line(event).decode())
            self._stdout.flush()

    def note_inputs(self, lane_id: str, inputs: LaneInputs) -> None:
        with self._lock:
            self.inputs[lane_id] = inputs
            run = self.run
        if run is not None and not run.snapshot_adopted:
            # folded into the next write of run.json
            run.snapshot_adopted = True
            run.pending_changes.append(lambda record: _adopt_snapshot(record, inputs))

    # -- run lifecycle ---------------------------------------------------------------------

    def begin(self, planned: Sequence[Tuple[Target, Lane]]) -> str:
        """Open the run record for the lanes this invocation may execute."""
        with self._lock:
            if self.run is not None:
                return self.run.run_id
            run_id = new_run_id()
            run_dir = self.state.run_dir(run_id)
            writer = RunWriter(run_dir)
            rerun = self.settings.rerun
            targets = {target.id: target for target, _ in planned}
            target = next(iter(targets.values())) if len(targets) == 1 else None
            record = RunRecord(
                run_id=run_id,
                status=RUN_RUNNING,
                rerun_of=rerun.run_id if rerun else None,
                target_id=target.id if target else None,
                target_description=_describe(target, planned),
                source_root=str(self.settings.source_root),
                created_at=now_timestamp(),
                plan_path=str(run_dir / PLAN_FILE),
                prepared_outputs_path=str(run_dir / PREPARED_OUTPUTS_FILE),
                changed_files=list(rerun.changed_files) if rerun else [],
                filters=list(rerun.filters) if rerun else self._manifest_filters(target),
                message=f"rerun of {rerun.run_id}" if rerun else None,
            )
            if rerun:
                record.snapshot_dir = rerun.snapshot_dir
                record.content_hash = rerun.content_hash
                record.git_head, record.git_dirty = rerun.git_head, rerun.git_dirty
            active = contextlib.ExitStack()
            active.enter_context(writer.begin(record))
            try:
                write_json(run_dir / PLAN_FILE, _plan(record, planned, self.owners).to_dict())
                write_json(run_dir / PREPARED_OUTPUTS_FILE, PreparedOutputsRecord().to_dict())
            except BaseException as exc:
                # never leave a `running` record behind a run that could not start
                record.status, record.finished_at = RUN_FAILED, now_timestamp()
                record.message = f"could not start the run: {exc}"
                with contextlib.suppress(OSError):
                    writer.create(record)
                active.close()
                raise
            self.run = _RunState(
                run_id=run_id,
                writer=writer,
                jobs={lane.id: _PlannedJob(t, lane) for t, lane in planned},
                active=active,
            )
            self._install_signal_handlers()
        self._emit(run_started_event(record))
        return run_id

    def finish(self) -> Optional[RunRecord]:
        """Close the run: unstarted jobs are accounted for, the final status is written."""
        with self._lock:
            run = self.run
            if run is None or run.final is not None:
                return run.final if run else None
            run.finishing = True  # from here on a signal is recorded, not raised
            closing = []
            for planned in run.jobs.values():
                if planned.record is None:
                    planned.record = self._record_unstarted(run, planned)
                    closing.append(planned.record)
                elif planned.record.status == RUN_RUNNING:
                    # its collect step never ran (`doit run execute:<lane>`, an interrupt)
                    planned.record = _settle(planned.record, run.interrupted)
                    closing.append(planned.record)
            order = {lane_id: index for index, lane_id in enumerate(run.jobs)}
            record = self._commit(run, closing, lambda r: _finalize(r, run.interrupted, order))
            run.final = record
            run.active.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._restore_signal_handlers()
        for job in closing:
            self._emit(job_event("job_finished", run.run_id, job))
        self._emit(run_finished_event(record))
        self._print_summary(record)
        return record

    # -- jobs ------------------------------------------------------------------------------

    def job_context(
        self,
        target: Target,
        lane: Lane,
        snapshot: Dict[str, Any],
        payloads: Sequence[Dict[str, Any]] = (),
    ) -> JobContext:
        run = self._require_run()
        return JobContext(
            run_id=run.run_id,
            target=target,
            lane=lane,
            state=self.state,
            source_root=self.settings.source_root,
            snapshot_dir=Path(snapshot["snapshot_dir"]),
            content_hash=str(snapshot["content_hash"]),
            snapshot_id=str(snapshot.get("tree_id") or snapshot["content_hash"]),
            job_dir=self.state.job_dir(run.run_id, lane.id),
            console=self.console,
            track_process=lambda pgid: self._track(lane.id, pgid),
            payloads=[StagedOutput.from_values(values) for values in payloads],
            builder=self.settings.builder,
            record_upload=self.record_upload,
            record_vm_execution=lambda execution: self.record_vm_execution(lane, execution),
        )

    def payload_log(self, payload_id: str, label: str, echo: bool = True) -> Callable[[str], None]:
        """A line sink into the host log of every planned job consuming `payload_id` (and,
        with `echo`, the console)."""
        run = self.run
        logs = []
        if run is not None:
            logs = [
                HostLog(self._job_dir(run, planned.lane) / HOST_LOG)
                for planned in run.jobs.values()
                if planned.target.payloads is not None and planned.target.payloads.id == payload_id
            ]

        def write(line: str) -> None:
            for log in logs:
                log.note(f"{label}: {line}")
            if echo:
                self.console(f"[{label}] {line}")

        return write

    def job_started(self, ctx: JobContext) -> None:
        run = self._require_run()
        inputs = self.inputs.get(ctx.lane.id)
        job = self._new_job(run, ctx.target, ctx.lane)
        job.identity = inputs.identity if inputs else None
        job.snapshot_dir, job.content_hash = str(ctx.snapshot_dir), ctx.content_hash
        job.pre_execution_prepare_duration_ms = (
            sum(run.prepare_ms.get(node, 0) for node in self._prepare_nodes(ctx.target)) or None
        )
        if ctx.payloads:
            self._record_outputs(run, ctx.target, ctx.lane, ctx.payloads, exposed=True)
        ctx.host_log.note(
            f"job `{ctx.lane.id}` started in run {run.run_id} "
            f"(snapshot {ctx.content_hash[:12]}, timeout {ctx.lane.timeout_secs}s)"
        )
        with self._lock:
            self._planned(run, ctx.target, ctx.lane).record = job
            self._commit(run, [job])
        self._emit(job_event("job_started", run.run_id, job))

    def job_outcome(self, lane: Lane, outcome: Outcome) -> None:
        """The command finished; the verdict waits for its artifacts to be collected."""
        run = self._require_run()
        with self._lock:
            job = self._running(run, lane)
            if job is None:
                return  # an interrupt already settled the job
            job.exit_code, job.message = outcome.exit_code, outcome.message
            self._commit(run, [job])

    def record_vm_execution(self, lane: Lane, execution: RemoteLinuxVmExecution) -> None:
        """A guest runtime's image identity and phase timings, kept as they complete."""
        run = self._require_run()
        with self._lock:
            job = self._running(run, lane)
            if job is not None:
                job.remote_linux_vm_execution = copy.deepcopy(execution)
                self._commit(run, [job])

    def job_finished(self, lane: Lane, outcome: Outcome) -> JobRecord:
        run = self._require_run()
        with self._lock:
            job = self._running(run, lane)
            if job is None:
                settled = run.jobs[lane.id].record
                assert settled is not None
                return settled  # an interrupt already settled it
            job.status = outcome.status
            job.exit_code, job.message = outcome.exit_code, outcome.message
            if run.interrupted and outcome.status == RUN_FAILED:
                job.message = f"interrupted by {run.interrupted}"
            job.finished_at = now_timestamp()
            if job.status == RUN_FAILED:
                run.failed_lanes.append(lane.id)
            self._commit(run, [job], lambda r: _mark_failed_early(r, job))
        self._emit(job_event("job_finished", run.run_id, job))
        return job

    def job_failed(
        self, target: Target, lane: Lane, message: str, detail: Optional[str] = None
    ) -> None:
        """An orchestrator error or an unmet dependency ended the job.

        `message` is the one-line reason the record carries; `detail` (a traceback) goes to
        the job's host log only.
        """
        run = self._require_run()
        with self._lock:
            if run.final is not None:
                return
            planned = self._planned(run, target, lane)
            if planned.record is None:
                planned.record = job = self._new_job(run, target, lane)
                self._emit(job_event("job_started", run.run_id, job))
            elif planned.record.status == RUN_RUNNING:
                job = planned.record
            else:
                return
            host_log = HostLog(self._job_dir(run, lane) / HOST_LOG)
            host_log.note(message)
            if detail:
                host_log.write_raw(detail.encode("utf-8", "replace"))
            job.status, job.message, job.finished_at = RUN_FAILED, message, now_timestamp()
            run.failed_lanes.append(lane.id)
            self._commit(run, [job], lambda r: _mark_failed_early(r, job))
        self._emit(job_event("job_finished", run.run_id, job))

    def job_reused(self, target: Target, lane: Lane) -> Optional[str]:
        """The lane's inputs are unchanged since it passed: record the reuse, run nothing."""
        run = self.run
        if run is None or lane.id not in run.jobs:
            return None
        inputs = self.inputs.get(lane.id)
        previous = inputs.last_passed_run if inputs else None
        # the logs and artifacts that prove the pass are the executing run's; a reused job
        # adds only its status.json here
        job = self._new_job(run, target, lane, logs_from=previous)
        job.status = RUN_PASSED
        job.finished_at = job.started_at
        job.exit_code = 0
        job.identity = inputs.identity if inputs else None
        if inputs is not None:
            job.snapshot_dir, job.content_hash = inputs.snapshot_dir, inputs.content_hash
        job.reused_from_run = previous
        job.message = f"reused: passed in run {previous} with the same inputs"
        if inputs and inputs.payloads:
            outputs = [StagedOutput.from_values(values) for values in inputs.payloads]
            self._record_outputs(run, target, lane, outputs, exposed=False)
        with self._lock:
            # the job's status.json is written in the background while doit checks the other
            # lanes, and run.json takes the job with its next write: a no-op rerun of many
            # lanes costs one run.json rewrite instead of one per lane
            run.jobs[lane.id].record = job
            run.pending.append(job)
            run.background.append(self._writer().submit(run.writer.write_job_file, job))
        self._emit(job_event("job_started", run.run_id, job))
        self._emit(job_event("job_finished", run.run_id, job))
        return previous

    def prepare_finished(
        self, node_id: str, started_at: str, finished_at: str, error: Optional[str]
    ) -> None:
        run = self.run
        if run is None:
            return
        timing = PrepareTiming(
            node_id=node_id,
            started_at=started_at,
            finished_at=finished_at,
            duration_ms=duration_ms(started_at, finished_at),
        )
        with self._lock:
            run.prepare_ms[node_id] = timing.duration_ms or 0
            if error is not None:
                run.failed_prepares[node_id] = error
            self._commit(run, [], lambda r: r.prepare_timings.append(timing))

    # -- interruption ----------------------------------------------------------------------

    def _track(self, lane_id: str, pgid: Optional[int]) -> None:
        run = self.run
        if run is None:
            return
        with self._lock:
            if pgid is None:
                run.process_groups.pop(lane_id, None)
            else:
                run.process_groups[lane_id] = pgid

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _SIGNAL_NAMES:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        run = self.run
        name = _SIGNAL_NAMES.get(signum, f"signal {signum}")
        if run is None or run.interrupted:
            os._exit(128 + signum)  # second signal: stop now
        for pgid in list(run.process_groups.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        if run.finishing:
            return  # the run is being closed: interrupting that would lose the final write
        run.interrupted = name
        self.console(f"pikaci: {name} received; stopping lanes and marking run {run.run_id}")
        # unwinds doit's loop; the reporter's complete_run then finishes the run record
        raise KeyboardInterrupt(name)

    def exit_if_interrupted(self) -> None:
        """After an interrupt the run is recorded; leave with the conventional code."""
        run = self.run
        if run is None or not run.interrupted:
            return
        for pgid in list(run.process_groups.values()):
            kill_process_group(pgid, grace=2.0)
        self._stdout.flush()
        self._stderr.flush()
        code = 130 if run.interrupted == "SIGINT" else 143
        os._exit(code)

    # -- helpers ---------------------------------------------------------------------------

    def unmet_reason(self, target: Target) -> Optional[str]:
        """Why lanes of `target` cannot execute: the first of its prepare nodes that failed."""
        run = self.run
        if run is None:
            return None
        for node in self._prepare_nodes(target):
            if node in run.failed_prepares:
                return f"prepare node `{node}` failed before execute: {run.failed_prepares[node]}"
        return None

    def _manifest_filters(self, target: Optional[Target]) -> List[str]:
        """A staged target's path filters, read from the forge manifest (their only source);
        none without a manifest. A manifest problem is reported, never fatal to the run."""
        manifest_path = self.settings.source_root / forge.MANIFEST_PATH
        if target is None or target.payloads is None or not manifest_path.is_file():
            return []
        try:
            return list(forge.filters_for_target(forge.load_manifest(manifest_path), target.id))
        except forge.ForgeManifestError as exc:
            self._stderr.write(f"pikaci: warning: no path filters recorded: {exc}\n")
            return []

    def _prepare_nodes(self, target: Target) -> List[str]:
        owner = self.owners.get(target.payloads.id) if target.payloads else None
        return prepare_nodes(target, owner)

    def _planned(self, run: _RunState, target: Target, lane: Lane) -> _PlannedJob:
        return run.jobs.setdefault(lane.id, _PlannedJob(target, lane))

    def _running(self, run: _RunState, lane: Lane) -> Optional[JobRecord]:
        """The job's record while it may still change; None once the run or job is settled."""
        planned = run.jobs.get(lane.id)
        if run.final is not None or planned is None or planned.record is None:
            return None
        return planned.record if planned.record.status == RUN_RUNNING else None

    def _require_run(self) -> _RunState:
        if self.run is None:
            raise RuntimeError("no run is open: lanes run through the pikaci doit reporter")
        return self.run

    def _job_dir(self, run: _RunState, lane: Lane) -> Path:
        return self.state.job_dir(run.run_id, lane.id)

    def _new_job(
        self, run: _RunState, target: Target, lane: Lane, logs_from: Optional[str] = None
    ) -> JobRecord:
        """A fresh job record; `logs_from` points logs and artifacts at the run that executed."""
        if logs_from is not None:
            job_dir = self.state.job_dir(logs_from, lane.id)
        else:
            job_dir = self._job_dir(run, lane)
            (job_dir / "artifacts").mkdir(parents=True, exist_ok=True)
            (job_dir / HOST_LOG).touch(exist_ok=True)
            (job_dir / "artifacts" / GUEST_LOG).touch(exist_ok=True)
        return JobRecord(
            id=lane.id,
            description=lane.description or f"lane {lane.id} of target {target.id}",
            status=RUN_RUNNING,
            executor=lane.execution.executor,
            placement=lane.execution.placement,
            runtime=lane.execution.runtime,
            plan_node_id=f"execute-{lane.id}",
            timeout_secs=lane.timeout_secs,
            host_log_path=str(job_dir / HOST_LOG),
            guest_log_path=str(job_dir / "artifacts" / GUEST_LOG),
            started_at=now_timestamp(),
            target_id=target.id,
            artifacts_dir=str(job_dir / "artifacts"),
        )

    def record_upload(self, upload: UploadRecord) -> None:
        """Account for a transfer to a builder in `run.json` (`uploads`)."""
        run = self.run
        if run is not None:
            run.writer.update(lambda record: record.uploads.append(upload))

    def record_realized(self, values: Dict[str, Any]) -> None:
        """A build realized an output: record it, before any lane consumes it."""
        run = self.run
        if run is None:
            return
        output = StagedOutput.from_values(values)

        def change(record: PreparedOutputsRecord) -> None:
            if all(item.node_id != output.node_id for item in record.outputs):
                record.upsert(output.to_record())

        run.writer.update_prepared_outputs(change)

    def _record_outputs(
        self,
        run: _RunState,
        target: Target,
        lane: Lane,
        outputs: Sequence[StagedOutput],
        exposed: bool,
    ) -> None:
        """Upsert the outputs a job consumes into prepared-outputs.json.

        An executed job gets its host symlink exposures (`staged-linux-rust/workspace-<role>`);
        a reused one only requests them: its evidence lives in the run that executed it.
        """
        job_dir = self._job_dir(run, lane)
        requested = []
        for output in outputs:
            if output.on_builder:
                continue  # mounted on the builder; nothing of it is exposed here
            link = job_dir / "staged-linux-rust" / f"workspace-{output.role}"
            if exposed:
                link.parent.mkdir(parents=True, exist_ok=True)
                tmp = link.with_name(f".{link.name}.tmp")
                if tmp.is_symlink():
                    tmp.unlink()
                tmp.symlink_to(output.store_path)
                tmp.replace(link)
            requested.append((output, Exposure(path=str(link))))

        def change(record: PreparedOutputsRecord) -> None:
            existing = {item.node_id: item for item in record.outputs}
            for output, exposure in requested:
                item = existing.get(output.node_id) or output.to_record()
                if exposure not in item.requested_exposures:
                    item.requested_exposures.append(exposure)
                if exposed and exposure not in item.exposures:
                    item.exposures.append(exposure)
                record.upsert(item)

        run.writer.update_prepared_outputs(change)

    def _record_unstarted(self, run: _RunState, planned: _PlannedJob) -> JobRecord:
        job = self._new_job(run, planned.target, planned.lane)
        own_failure = self.unmet_reason(planned.target)
        if run.interrupted:
            job.status, job.message = RUN_SKIPPED, f"not run: interrupted by {run.interrupted}"
        elif own_failure is not None:
            job.status, job.message = RUN_FAILED, own_failure
        elif run.failed_prepares:
            node, message = next(iter(run.failed_prepares.items()))
            job.status = RUN_SKIPPED
            job.message = f"not run because prepare phase stopped after `{node}` failed: {message}"
        elif run.failed_lanes:
            job.status, job.message = RUN_SKIPPED, "not run because an earlier execute node failed"
        else:
            job.status, job.message = RUN_SKIPPED, "not run: doit did not reach this lane"
        job.finished_at = job.started_at
        HostLog(self._job_dir(run, planned.lane) / HOST_LOG).note(job.message)
        return job

    def _commit(
        self,
        run: _RunState,
        jobs: Sequence[JobRecord],
        change: Optional[Callable[[RunRecord], None]] = None,
    ) -> RunRecord:
        with self._lock:
            for future in run.background:
                future.result()  # an error writing a reused job's record surfaces here
            run.background.clear()
            pending, changes = list(run.pending), list(run.pending_changes)

            def apply(record: RunRecord) -> None:
                for each in [*changes, *([change] if change else [])]:
                    each(record)

            record = run.writer.commit(jobs, apply, written_jobs=pending)
            # dropped only once written: an interrupted write leaves them for the next one
            del run.pending[: len(pending)]
            del run.pending_changes[: len(changes)]
            return record

    def _print_summary(self, record: RunRecord) -> None:
        out = self._stdout
        if self.settings.output == "json":
            out.write(dumps_pretty(record.to_dict()).decode())
        elif self.settings.output == "human":
            for job in record.jobs:
                out.write(f"{record.run_id} {job.id} {job.status}\n")
        bundle = self.state.runs_dir / record.run_id
        reused = sum(1 for job in record.jobs if job.reused_from_run)
        summary = f"pikaci: run {record.run_id} {record.status}"
        if record.jobs:
            summary += f" ({len(record.jobs)} job(s), {reused} reused)"
        lines = [summary, f"pikaci: run bundle: {bundle}"]
        for job in record.jobs:
            if job.message:
                lines.append(f"pikaci: {job.id}: {job.message}")
        if record.message and record.status == RUN_FAILED:
            lines.append(f"pikaci: {record.message}")
        err = self._stderr
        err.write("".join(line + "\n" for line in lines))
        out.flush()
        err.flush()


def _describe(target: Optional[Target], planned: Sequence[Tuple[Target, Lane]]) -> str:
    if target is not None:
        return target.description or f"target {target.id}"
    return "lanes " + ", ".join(lane.id for _, lane in planned)


def _plan(
    record: RunRecord, planned: Sequence[Tuple[Target, Lane]], owners: Dict[str, Target]
) -> RunPlanRecord:
    nodes: List[PlanNode] = []
    seen: List[str] = []

    def prepare(node_id: str, description: str, body: Dict[str, Any], deps: List[str]) -> None:
        if node_id in seen:
            return
        seen.append(node_id)
        nodes.append(
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
        guest = lane.execution.runtime != "host_process"
        nodes.append(
            PlanNode(
                kind="execute",
                id=execute_node(lane.id),
                description=lane.description or f"lane {lane.id}",
                executor=lane.execution.executor,
                placement=lane.execution.placement,
                runtime=lane.execution.runtime,
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
    )


def _adopt_snapshot(record: RunRecord, inputs: LaneInputs) -> None:
    if record.snapshot_dir:
        return
    record.snapshot_dir = inputs.snapshot_dir
    record.content_hash = inputs.content_hash
    record.git_head, record.git_dirty = inputs.git_head, inputs.git_dirty


def _mark_failed_early(record: RunRecord, job: JobRecord) -> None:
    # the run is failed as soon as any job is
    if job.status == RUN_FAILED and record.status == RUN_RUNNING:
        record.status = RUN_FAILED


def _settle(job: JobRecord, interrupted: Optional[str]) -> JobRecord:
    if interrupted:
        finished_command = job.message if job.exit_code is not None else None
        job.status = RUN_FAILED
        job.message = f"interrupted by {interrupted}"
        if finished_command:
            job.message += f" before its artifacts were collected ({finished_command})"
    elif job.exit_code is None:
        job.status = RUN_FAILED
        job.message = job.message or "job ended without a recorded outcome"
    else:
        job.status = RUN_PASSED if job.exit_code == 0 else RUN_FAILED
    job.finished_at = now_timestamp()
    return job


def _finalize(record: RunRecord, interrupted: Optional[str], order: Dict[str, int]) -> None:
    # jobs were appended as they started; the final record lists them in catalog order
    record.jobs.sort(key=lambda job: order.get(job.id, len(order)))
    statuses = [job.status for job in record.jobs]
    if interrupted:
        record.status = RUN_FAILED
        record.message = f"interrupted by {interrupted}"
    elif RUN_FAILED in statuses:
        record.status = RUN_FAILED
    elif statuses and all(status == RUN_SKIPPED for status in statuses):
        record.status = RUN_SKIPPED
    else:
        record.status = RUN_PASSED
    record.finished_at = now_timestamp()
