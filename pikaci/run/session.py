"""One orchestrator invocation: its run record and job transitions.

The doit reporter opens the run (`begin`) when the selected tasks include lanes and closes it
(`finish`); the task actions move their own job through `running` to its verdict. Every
transition rewrites `jobs/<job>/status.json` and `run.json` atomically under the run's lock
and, in `jsonl` mode, prints one lifecycle event on stdout.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

from pikaci.catalog import Catalog, Lane, Target
from pikaci.events import job_event, run_finished_event, run_started_event
from pikaci.forge.manifest import recorded_filters
from pikaci.git import GitState, git_state
from pikaci.model import (
    RUN_FAILED,
    RUN_PASSED,
    RUN_RUNNING,
    JobRecord,
    PreparedOutputsRecord,
    PrepareTiming,
    RemoteLinuxVmExecution,
    RunRecord,
    UploadRecord,
)
from pikaci.payloads.staged import StagedOutput
from pikaci.plan import LaneInputs, describe_run, payload_owners, prepare_nodes, run_plan
from pikaci.retention import remove_abandoned_staging
from pikaci.run.console import Console
from pikaci.run.consumer_check import check_consumer
from pikaci.run.outputs import payload_sink, record_consumed, record_realized
from pikaci.run.rerun import inherited
from pikaci.run.signals import Interruption
from pikaci.run.transitions import (
    adopt_snapshot,
    finalize,
    mark_failed_early,
    new_job,
    settle,
    unstarted_outcome,
)
from pikaci.runtimes.base import HostLog, JobContext, Outcome
from pikaci.settings import Settings
from pikaci.store import (
    GUEST_LOG,
    HOST_LOG,
    PLAN_FILE,
    PREPARED_OUTPUTS_FILE,
    RunWriter,
    StateRoot,
    write_json,
)
from pikaci.timestamps import duration_ms, new_run_id, now_timestamp

ABANDON_LOCK_SECS = 5.0  # a second signal waits this long for a record write under way


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
    signals: Interruption
    prepare_ms: Dict[str, int] = field(default_factory=dict)  # node id -> duration
    failed_prepares: Dict[str, str] = field(default_factory=dict)  # node id -> message
    failed_lanes: List[str] = field(default_factory=list)
    final: Optional[RunRecord] = None
    snapshot_adopted: bool = False
    # reused jobs and run changes not yet written: folded into the next run.json write
    pending: List[JobRecord] = field(default_factory=list)
    pending_changes: List[Callable[[RunRecord], None]] = field(default_factory=list)
    background: List[Future[None]] = field(default_factory=list)

    @property
    def interrupted(self) -> Optional[str]:
        return self.signals.reason


class RunSession:
    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.catalog = catalog
        self.owners = payload_owners(catalog)
        self.settings = settings
        self.state = StateRoot(settings.state_root)
        self.out = Console(settings.output, settings.results_only_stdout)
        self.run: Optional[_RunState] = None
        self._lock = threading.RLock()
        self._git: Optional[GitState] = None
        self._git_read = False
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

    def console(self, line: str) -> None:
        self.out.line(line)

    # -- run lifecycle ---------------------------------------------------------------------

    def begin(self, planned: Sequence[Tuple[Target, Lane]]) -> str:
        """Open the run record for the lanes this invocation may execute."""
        with self._lock:
            if self.run is not None:
                return self.run.run_id
            check_consumer(self.settings.fulfill, planned)
            run_id = new_run_id()
            # staging dirs of orchestrators killed while they opened a run go before a new one
            remove_abandoned_staging(self.state)
            run_dir = self.state.run_dir(run_id)
            writer = RunWriter(run_dir)
            rerun = self.settings.rerun
            target, description = describe_run(planned)
            record = RunRecord(
                run_id=run_id,
                status=RUN_RUNNING,
                rerun_of=rerun.run_id if rerun else None,
                target_id=target.id if target else None,
                target_description=description,
                source_root=str(self.settings.source_root),
                created_at=now_timestamp(),
                plan_path=str(run_dir / PLAN_FILE),
                prepared_outputs_path=str(run_dir / PREPARED_OUTPUTS_FILE),
                changed_files=list(rerun.changed_files if rerun else self.settings.changed_files),
                filters=list(rerun.filters) if rerun else self._filters(target),
                message=f"rerun of {rerun.run_id}" if rerun else None,
            )
            for name, value in self.settings.fulfill.record_fields().items():
                setattr(record, name, value)
            if rerun:
                for name, old_value in inherited(rerun).items():
                    setattr(record, name, old_value)
                record.snapshot_dir = rerun.snapshot_dir
                record.content_hash = rerun.content_hash
                record.git_head, record.git_dirty = rerun.git_head, rerun.git_dirty
            active = contextlib.ExitStack()
            active.enter_context(writer.begin(record))
            try:
                plan = run_plan(record, planned, self.owners)
                write_json(run_dir / PLAN_FILE, plan.to_dict())
                write_json(run_dir / PREPARED_OUTPUTS_FILE, PreparedOutputsRecord().to_dict())
            except BaseException as exc:
                # never leave a `running` record behind a run that could not start
                record.status, record.finished_at = RUN_FAILED, now_timestamp()
                record.message = f"could not start the run: {exc}"
                with contextlib.suppress(OSError):
                    writer.create(record)
                active.close()
                raise
            signals = Interruption(run_id, self.console, self.out.flush)
            signals.abandon = self._abandon
            self.run = _RunState(
                run_id=run_id,
                writer=writer,
                jobs={lane.id: _PlannedJob(t, lane) for t, lane in planned},
                active=active,
                signals=signals,
            )
            signals.install()
            # doit can fail after the last task and skip the reporter's close (its own dep
            # file on a full disk): the run is still closed on the way out
            atexit.register(self._finish_at_exit)
        self.out.event(run_started_event(record))
        return run_id

    def _finish_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.finish()

    def step(self) -> ContextManager[None]:
        """A lane step runs in this thread (see `Interruption.step`)."""
        run = self.run
        return run.signals.step() if run is not None else contextlib.nullcontext()

    def finish(self) -> Optional[RunRecord]:
        """Close the run: unstarted jobs are accounted for, the final status is written."""
        run = self.run
        # after an interrupt, lanes in other threads tear down their runtimes and record
        # themselves first
        stopping = run is not None and run.final is None and run.interrupted
        if stopping and run is not None and not run.signals.wait_for_steps():
            self.out.warn(f"run {run.run_id}: lanes still stopping; closing the run anyway")
        with self._lock:
            run = self.run
            if run is None or run.final is not None:
                return run.final if run else None
            run.signals.finishing = True  # from here on a signal is recorded, not raised
            try:
                closing = self._settle_jobs(run)
                order = {lane_id: index for index, lane_id in enumerate(run.jobs)}
                record = self._commit(run, closing, lambda r: finalize(r, run.interrupted, order))
            except OSError as exc:
                # a full disk: every record keeps its last complete version, and the lock
                # released below shows the run as interrupted to every reader
                self.out.warn(f"run {run.run_id}: cannot write its final record: {exc}")
                self._release(run)
                return None
            run.final = record
            self._release(run)
            atexit.unregister(self._finish_at_exit)
        for job in closing:
            self.out.event(job_event("job_finished", run.run_id, job))
        self.out.event(run_finished_event(record))
        self.out.summary(record, self.state)
        return record

    def _abandon(self) -> None:
        """A second signal: the run and its running jobs marked as interrupted in one write,
        unless the lock stays taken (another thread mid-write) for ABANDON_LOCK_SECS."""
        run = self.run
        if run is None or run.final is not None:
            return
        if not self._lock.acquire(timeout=ABANDON_LOCK_SECS):
            return
        try:
            if run.final is None:
                closing = self._settle_jobs(run)
                order = {lane_id: index for index, lane_id in enumerate(run.jobs)}
                run.final = self._commit(
                    run, closing, lambda r: finalize(r, run.interrupted, order)
                )
        finally:
            self._lock.release()

    def _settle_jobs(self, run: _RunState) -> List[JobRecord]:
        """Unstarted jobs get their reason, running ones (collect never ran) their verdict."""
        closing = []
        for planned in run.jobs.values():
            if planned.record is None:
                planned.record = self._record_unstarted(run, planned)
                closing.append(planned.record)
            elif planned.record.status == RUN_RUNNING:
                # its collect step never ran (`doit run execute:<lane>`, an interrupt)
                planned.record = settle(planned.record, run.interrupted)
                closing.append(planned.record)
        return closing

    def _release(self, run: _RunState) -> None:
        run.active.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        run.signals.restore()

    def exit_if_interrupted(self) -> None:
        if self.run is not None:
            self.run.signals.exit_if_interrupted()

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
            track_process=lambda pgid: run.signals.track(lane.id, pgid),
            payloads=[StagedOutput.from_values(values) for values in payloads],
            builder=self.settings.builder,
            record_upload=self.record_upload,
            record_vm_execution=lambda execution: self.record_vm_execution(lane, execution),
        )

    def payload_log(self, payload_id: str, label: str, echo: bool = True) -> Callable[[str], None]:
        """A line sink into the host log of every planned job consuming `payload_id` (and,
        with `echo`, the console)."""
        run = self.run
        consumers = (
            [] if run is None else [p for p in run.jobs.values() if _consumes(p, payload_id)]
        )
        logs = [
            HostLog(self._job_dir(run, planned.lane) / HOST_LOG) for planned in consumers if run
        ]
        return payload_sink(logs, label, self.console if echo else None)

    def job_started(self, ctx: JobContext, inputs: LaneInputs) -> None:
        run = self._require_run()
        job = self._new_job(run, ctx.target, ctx.lane)
        job.identity = inputs.identity
        job.snapshot_dir, job.content_hash = str(ctx.snapshot_dir), ctx.content_hash
        job.pre_execution_prepare_duration_ms = (
            sum(run.prepare_ms.get(node, 0) for node in self._prepare_nodes(ctx.target)) or None
        )
        if ctx.payloads:
            record_consumed(
                run.writer,
                self._job_dir(run, ctx.lane),
                ctx.payloads,
                exposed=True,
                consumer=self.settings.fulfill,
                log=ctx.host_log.note,
            )
        ctx.host_log.note(
            f"job `{ctx.lane.id}` started in run {run.run_id} "
            f"(snapshot {ctx.content_hash[:12]}, timeout {ctx.lane.timeout_secs}s)"
        )
        with self._lock:
            self._adopt_snapshot(run, inputs)
            self._planned(run, ctx.target, ctx.lane).record = job
            self._commit(run, [job])
        self.out.event(job_event("job_started", run.run_id, job))

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
            self._commit(run, [job], lambda r: mark_failed_early(r, job))
        self.out.event(job_event("job_finished", run.run_id, job))
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
                self.out.event(job_event("job_started", run.run_id, job))
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
            self._commit(run, [job], lambda r: mark_failed_early(r, job))
        self.out.event(job_event("job_finished", run.run_id, job))

    def job_reused(self, target: Target, lane: Lane, inputs: LaneInputs, passed_run: str) -> bool:
        """The lane's inputs are unchanged since it passed in `passed_run`: record the reuse,
        run nothing. False when no open run plans the lane (nothing was recorded)."""
        run = self.run
        if run is None or lane.id not in run.jobs:
            return False
        # the logs and artifacts that prove the pass are the executing run's; a reused job
        # adds only its status.json here
        job = self._new_job(run, target, lane, logs_from=passed_run)
        job.status = RUN_PASSED
        job.finished_at = job.started_at
        job.exit_code = 0
        job.identity = inputs.identity
        job.snapshot_dir, job.content_hash = inputs.snapshot_dir, inputs.content_hash
        job.reused_from_run = passed_run
        job.message = f"reused: passed in run {passed_run} with the same inputs"
        if inputs.payloads:
            outputs = [StagedOutput.from_values(values) for values in inputs.payloads]
            record_consumed(
                run.writer, self._job_dir(run, lane), outputs, False, self.settings.fulfill
            )
        with self._lock:
            self._adopt_snapshot(run, inputs)
            # the job's status.json is written in the background while doit checks the other
            # lanes, and run.json takes the job with its next write: a no-op rerun of many
            # lanes costs one run.json rewrite instead of one per lane
            run.jobs[lane.id].record = job
            run.pending.append(job)
            run.background.append(self._writer().submit(run.writer.write_job_file, job))
        self.out.event(job_event("job_started", run.run_id, job))
        self.out.event(job_event("job_finished", run.run_id, job))
        return True

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

    def record_upload(self, upload: UploadRecord) -> None:
        """Account for a transfer to a builder in `run.json` (`uploads`)."""
        run = self.run
        if run is not None:
            run.writer.update(lambda record: record.uploads.append(upload))

    def record_realized(self, values: Dict[str, Any]) -> None:
        """A build realized an output: in prepared-outputs.json even if no lane runs."""
        run = self.run
        if run is not None:
            record_realized(run.writer, values, self.settings.fulfill)

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

    def _adopt_snapshot(self, run: _RunState, inputs: LaneInputs) -> None:
        """The first lane that starts or is reused gives the run its snapshot fields; folded
        into the next write of run.json."""
        if not run.snapshot_adopted:
            run.snapshot_adopted = True
            run.pending_changes.append(lambda record: adopt_snapshot(record, inputs))

    def _filters(self, target: Optional[Target]) -> List[str]:
        """A staged target's path filters; a manifest problem is a warning, never fatal."""
        if target is None or target.payloads is None:
            return []
        filters, problem = recorded_filters(self.settings.source_root, target.id)
        if problem is not None:
            self.out.warn(f"no path filters recorded: {problem}")
        return filters

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
            return new_job(target, lane, self.state.job_dir(logs_from, lane.id))
        job_dir = self._job_dir(run, lane)
        (job_dir / "artifacts").mkdir(parents=True, exist_ok=True)
        (job_dir / HOST_LOG).touch(exist_ok=True)
        (job_dir / "artifacts" / GUEST_LOG).touch(exist_ok=True)
        return new_job(target, lane, job_dir)

    def _record_unstarted(self, run: _RunState, planned: _PlannedJob) -> JobRecord:
        job = self._new_job(run, planned.target, planned.lane)
        job.status, job.message = unstarted_outcome(
            run.interrupted,
            self.unmet_reason(planned.target),
            run.failed_prepares,
            run.failed_lanes,
        )
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


def _consumes(planned: _PlannedJob, payload_id: str) -> bool:
    payloads = planned.target.payloads
    return payloads is not None and payloads.id == payload_id
