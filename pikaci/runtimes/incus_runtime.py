"""`local` + `incus` and `remote_ssh` + `incus`: the lane runs in an Incus instance.

The same steps either way; only where the `incus` commands run differs (`IncusHost`: a local
shell, or the builder's over the shared SSH connection). Phases, each timed into the job's
`remote_linux_vm_execution`:

1. prepare_directories: the job's directories (on the builder: `<work>/runs/<run>/jobs/<job>`);
2. stage_workspace_snapshot: locally the target's snapshot; on a builder the snapshot is
   leased and published (content-addressed, once);
3. prepare_runtime (one script): reap marked instances older than the bound, read the image
   identity (exact alias match), delete a stale instance of the same name, `init` with limits
   and the ownership marker, add the snapshot and every payload mount as read-only disks,
   `start`, and wait until `incus exec … true` answers (bounded);
4. launch_guest: write the guest request with `incus exec … sh -c 'cat > …'` from stdin;
5. wait_for_completion: `incus exec … pikaci-incus-run <request>`, output streamed into the
   host log, bounded by the lane timeout plus a grace (the runner enforces the timeout itself);
6. collect_artifacts: one tar of the runner's files and the lane's artifacts, collected as the
   sandboxes collect theirs.

The instance is deleted with `--force` whatever happens: pass, failure, timeout, interrupt or
an error of pikaci's own; and by its guard (`pikaci.incus.guard`, armed before `init`) when the
orchestrator dies without doing it."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import time
from typing import Iterator, List, Sequence, Tuple

from pikaci.builder.layout import RemoteLayout
from pikaci.builder.transport import RemoteCommandError
from pikaci.incus import commands as incus
from pikaci.incus import config as incus_config
from pikaci.incus.creation import plan_creation
from pikaci.incus.guard import guarded_instance
from pikaci.incus.hosts import (
    BuilderHost,
    IncusHost,
    LocalHost,
    captured,
    command_failed,
    quote_argv,
    reap,
)
from pikaci.model import IncusImage, PhaseTiming, RemoteLinuxVmExecution, dumps_pretty
from pikaci.runtimes.base import JobContext, Outcome
from pikaci.runtimes.guest_layout import (
    HOST_TIMEOUT_GRACE_SECS,
    TIMEOUT_EXIT_CODES,
    MountSources,
    collect_runtime_dir,
    guest_request,
    payload_mounts,
    result_file_loader,
    runner_outcome,
    runtime_dir,
)
from pikaci.runtimes.mounts import builder_mount_sources, local_mount_sources
from pikaci.runtimes.remote_common import (
    extract_archive,
    leased_snapshot,
    open_transport,
    require_builder,
    streamer,
)
from pikaci.timestamps import duration_ms, now_timestamp, utc_now

ENV_REAP_AFTER = "PIKACI_INCUS_REAP_AFTER_SECS"
READY_POLL_SECS = 0.2


class _Phases:
    """Times each phase into the job record as it completes (an interrupted lane keeps the
    phases it got through)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.execution = RemoteLinuxVmExecution(backend=incus_config.BACKEND)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = now_timestamp()
        clock = time.monotonic()
        try:
            yield
        finally:
            finished = now_timestamp()
            self.execution.phases.append(
                PhaseTiming(
                    phase=name,
                    started_at=started,
                    finished_at=finished,
                    duration_ms=duration_ms(started, finished),
                )
            )
            self.ctx.host_log.note(f"phase {name}: {time.monotonic() - clock:.2f}s")
            self.ctx.record_vm_execution(self.execution)


class IncusRuntime:
    def __init__(self, remote: bool) -> None:
        self.remote = remote

    def execute(self, ctx: JobContext) -> Outcome:
        settings = incus_config.incus_settings_from_environment(
            os.environ, sudo_default=self.remote
        )
        phases = _Phases(ctx)
        instance = incus.instance_name(ctx.run_id, ctx.lane.id)
        shutil.rmtree(runtime_dir(ctx).parent, ignore_errors=True)  # an earlier host verdict
        with contextlib.ExitStack() as stack:
            with phases.phase("prepare_directories"):
                host, mounts_of = self._host(ctx)
            with phases.phase("stage_workspace_snapshot"):
                snapshot = self._stage(ctx, host, stack)
            devices = _plan_devices(ctx, settings, instance, snapshot, mounts_of)
            # from here on the instance may exist: delete it whatever happens, and should this
            # process die first, the guard deletes it
            stack.enter_context(guarded_instance(host, settings, instance))
            stack.callback(_delete, ctx, host, settings, instance)
            with phases.phase("prepare_runtime"):
                phases.execution.incus_image = _prepare(ctx, host, settings, instance, devices)
            with phases.phase("launch_guest"):
                _write_request(ctx, host, settings, instance)
            with phases.phase("wait_for_completion"):
                code, timed_out = _run_guest(ctx, host, settings, instance)
            with phases.phase("collect_artifacts"):
                _pull_run_dir(ctx, host, settings, instance)
        load = result_file_loader(ctx, runtime_dir(ctx) / "result.json")
        return runner_outcome(ctx, load, code, timed_out)

    def collect(self, ctx: JobContext, outcome: Outcome) -> Outcome:
        return collect_runtime_dir(ctx, outcome)

    def _host(self, ctx: JobContext) -> Tuple[IncusHost, MountSources]:
        if not self.remote:
            ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
            return LocalHost(ctx.host_log.note, ctx.track_process), local_mount_sources
        builder = require_builder(ctx)
        transport = open_transport(ctx, builder)
        job = RemoteLayout.for_builder(builder).job_dir(ctx.run_id, ctx.lane.id)
        transport.run("prepare job directory", f"mkdir -p {shlex.quote(job)}")
        return BuilderHost(transport), builder_mount_sources(builder)

    def _stage(self, ctx: JobContext, host: IncusHost, stack: contextlib.ExitStack) -> str:
        if not isinstance(host, BuilderHost):
            return str(ctx.snapshot_dir)
        layout = RemoteLayout.for_builder(host.transport.builder)
        # held until the instance is gone
        return stack.enter_context(leased_snapshot(ctx, host.transport, layout))


def _reap_after_secs() -> int:
    raw = os.environ.get(ENV_REAP_AFTER, "").strip()
    if not raw:
        return incus_config.REAP_AFTER_SECS
    if not raw.isdigit():
        raise ValueError(f"{ENV_REAP_AFTER}: expected a number of seconds, got {raw!r}")
    return int(raw)


def _plan_devices(
    ctx: JobContext,
    settings: incus_config.IncusSettings,
    instance: str,
    snapshot: str,
    mounts_of: MountSources,
) -> List[List[str]]:
    """The snapshot and every payload mount as read-only disk devices, checked before any
    instance exists (reserved guest paths, shared guest paths, device names)."""
    payload_mounts(ctx.payloads, mounts_of)
    specs = [
        (str(source), mount.guest_path, output.manifest.kind, mount.name)
        for output in ctx.payloads
        for mount, source in mounts_of(output)
    ]
    return incus.plan_devices(settings, instance, snapshot, specs)


def _prepare(
    ctx: JobContext,
    host: IncusHost,
    settings: incus_config.IncusSettings,
    instance: str,
    devices: Sequence[List[str]],
) -> IncusImage:
    reap(host, settings, _reap_after_secs(), ctx.host_log.note, keep_run_ids=(ctx.run_id,))
    listed = captured(host, "image identity", incus.image_list_argv(settings))
    if listed.exit_code != 0:
        raise command_failed(host, f"incus image list {settings.image_alias}", listed)
    image = incus.parse_image_identity(listed.text, settings)
    ctx.host_log.note(f"image {image.alias} in project {image.project}: {image.fingerprint}")
    creation = plan_creation(host, settings, image, ctx.host_log.note, utc_now)
    ctx.host_log.note(creation.describe())
    owner = incus.owner_config(ctx.run_id, now_timestamp())
    # the bound is upstream's (attempts x interval); polled finer, since a container is
    # usually ready a fraction of a second after `start`
    bound = settings.ready_attempts * settings.ready_interval_secs
    poll = min(READY_POLL_SECS, settings.ready_interval_secs)
    polls = max(1, int(bound / poll))
    lines = [
        "set -eu",
        f"{quote_argv(incus.delete_argv(settings, instance))} >/dev/null 2>&1 || true",
        quote_argv(creation.create_argv(settings, instance, owner)),
        *[
            # sources resolved on the host that mounts them, as upstream
            _device_line(argv)
            for argv in devices
        ],
        quote_argv(incus.start_argv(settings, instance)),
        "n=0",
        f"until {quote_argv(incus.ready_probe_argv(settings, instance))} >/dev/null 2>&1; do",
        "  n=$((n + 1))",
        f'  if [ "$n" -ge {polls} ]; then',
        '    echo "Incus instance did not become ready in time"; exit 3',
        "  fi",
        f"  sleep {poll:g}",
        "done",
        "echo ready",
    ]
    limit = 2 * bound + 300  # init, devices and start come on top of the readiness wait
    done = host.script("prepare instance", "\n".join(lines), timeout_secs=limit)
    if done.exit_code != 0:
        raise command_failed(host, f"preparing instance {instance}", done)
    return image


def _device_line(argv: List[str]) -> str:
    """The device-add command with its `source=` resolved (`readlink -f`) where it runs."""
    index = next(i for i, word in enumerate(argv) if word.startswith("source="))
    source = argv[index][len("source=") :]
    head, tail = quote_argv(argv[:index]), quote_argv(argv[index + 1 :])
    resolved = f'"source=$(readlink -f {shlex.quote(source)})"'
    return f"{head} {resolved} {tail}".rstrip()


def _write_request(
    ctx: JobContext, host: IncusHost, settings: incus_config.IncusSettings, instance: str
) -> None:
    request = dumps_pretty(guest_request(ctx))
    argv = incus.write_file_argv(settings, instance, incus_config.GUEST_REQUEST_PATH)
    done = host.script("write guest request", quote_argv(argv), stdin=request)
    if done.exit_code != 0:
        raise command_failed(host, "writing the guest request", done)


def _run_guest(
    ctx: JobContext, host: IncusHost, settings: incus_config.IncusSettings, instance: str
) -> Tuple[int, bool]:
    limit = ctx.lane.timeout_secs + HOST_TIMEOUT_GRACE_SECS
    started = time.monotonic()
    done = host.script(
        f"lane {ctx.lane.id}",
        quote_argv(incus.launch_argv(settings, instance)),
        timeout_secs=limit,
        on_line=streamer(ctx, "[runner:stdout] "),
    )
    elapsed = time.monotonic() - started
    timed_out = done.exit_code in TIMEOUT_EXIT_CODES and elapsed >= limit
    if timed_out:
        ctx.host_log.note(f"timeout after {limit}s, killing the guest command")
    ctx.host_log.note(f"guest runner exited with {done.exit_code} after {elapsed:.2f}s")
    return done.exit_code, timed_out


def _pull_run_dir(
    ctx: JobContext, host: IncusHost, settings: incus_config.IncusSettings, instance: str
) -> None:
    argv = incus.exec_argv(
        settings, instance, ["tar", "-C", incus_config.GUEST_RUN_DIR, "-cf", "-", "."]
    )
    done = captured(host, "collect guest files", argv)  # a tar archive: stdout alone
    if done.exit_code != 0:
        raise command_failed(host, "collecting the guest's files", done)
    staging = runtime_dir(ctx)
    staging.mkdir(parents=True, exist_ok=True)
    extract_archive(done.stdout, staging, ctx.host_log.note)


def _delete(
    ctx: JobContext, host: IncusHost, settings: incus_config.IncusSettings, instance: str
) -> None:
    try:
        done = host.script(f"delete {instance}", quote_argv(incus.delete_argv(settings, instance)))
    except (RemoteCommandError, OSError) as exc:
        ctx.host_log.note(f"deleting {instance} failed: {exc}")
        return
    if done.exit_code != 0:
        ctx.host_log.note(f"deleting {instance} failed (exit {done.exit_code}): {done.text[-300:]}")
