"""`remote_ssh` + `bubblewrap`: the guest layout of the Incus image, on a builder, in bubblewrap.

A lane gets exactly the local sandbox's layout (`guest_layout`), built from the builder's own
files: its `/usr` and system directories, its tools in the system profile, the snapshot
published there, payload mounts from its Nix store. The same guest runner reads the same
request file; its files come back into the job's local bundle as the local sandbox leaves them.

On the builder a lane's files live under `<work>/runs/<run>/jobs/<job>/pika-cloud/` (the
sandbox's `/run/pika-cloud`); the system profile is shared, content-addressed by pikaci's own
files and the builder's tool list, at `<work>/sandbox/sw-<digest>/` (published by rename).

Round trips per lane, over the builder's shared connection: publish (one to find the snapshot,
one more to upload it) and the lease held meanwhile (one long-lived session); `prepare` resets
the run dir, unpacks the request and the profile's files from one tar on stdin, makes the
profile if needed and reports the builder's system-dir layout; `run` starts bwrap under the lane
timeout plus the host grace, streams the runner's output and, after a per-run marker the lane
cannot know, sends the runner's result.json back; `collect` pulls the lifecycle files and the
artifacts as one tar and removes the run dir. bwrap runs with `--die-with-parent` under the
transport's watchdog, so a lost connection leaves nothing running on the builder.
"""

from __future__ import annotations

import io
import secrets
import shlex
import shutil
import tarfile
import time
from typing import List, Tuple

from pikaci.builder.layout import RemoteLayout
from pikaci.builder.transport import Transport
from pikaci.guest import runner as guest
from pikaci.model import TerminalResult, dumps_pretty, loads_object
from pikaci.runtimes.base import JobContext, Outcome
from pikaci.runtimes.guest_layout import (
    HOST_BINS,
    HOST_TIMEOUT_GRACE_SECS,
    RUNNER_NAME,
    SYSTEM_DIRS_PROBE,
    TIMEOUT_EXIT_CODES,
    SandboxError,
    SystemDirs,
    bwrap_command,
    collect_runtime_dir,
    guest_request,
    parse_system_dirs,
    payload_mounts,
    profile_content_digest,
    profile_etc_files,
    runner_outcome,
    runner_source,
    runtime_dir,
)
from pikaci.runtimes.mounts import builder_mount_sources
from pikaci.runtimes.remote_common import (
    extract_archive,
    leased_snapshot,
    open_transport,
    require_builder,
    streamer,
)

RUN_DIR_NAME = "pika-cloud"
NO_BWRAP = 97  # the prepare script's exit code when the builder lacks bwrap
RESULT_LIMIT = 1 << 20  # bytes of the runner's result.json sent back with the run


class RemoteSandboxRuntime:
    def execute(self, ctx: JobContext) -> Outcome:
        log = ctx.host_log.note
        builder = require_builder(ctx)
        layout = RemoteLayout.for_builder(builder)
        job = layout.job_dir(ctx.run_id, ctx.lane.id)
        run_dir = f"{job}/{RUN_DIR_NAME}"
        # a bad manifest fails the lane before anything happens on the builder
        mounts = payload_mounts(ctx.payloads, builder_mount_sources(builder))
        shutil.rmtree(runtime_dir(ctx).parent, ignore_errors=True)  # an earlier host verdict
        # not closed: the shared master stays up (ControlPersist) for collect and other lanes
        transport = open_transport(ctx, builder)
        with leased_snapshot(ctx, transport, layout) as snapshot:
            system, system_dirs = _prepare(transport, layout, job, _prepare_payload(ctx))
            argv = bwrap_command(
                system=system,
                run_dir=run_dir,
                snapshot_dir=snapshot,
                mounts=mounts,
                system_dirs=system_dirs,
                run_as_root=ctx.lane.run_as_root,
                network=ctx.lane.network,
                env=sorted(ctx.lane.env.items()),
            )
            log(f"sandbox command: {argv!r}")
            for source, target in mounts:
                log(f"payload mount: {target} <- {builder.host}:{source} (read-only)")
            stream = _RunnerStream(ctx, f"{builder.host}:{run_dir}/{guest.RESULT_FILE}")
            limit = ctx.lane.timeout_secs + HOST_TIMEOUT_GRACE_SECS
            started = time.monotonic()
            # the runner enforces the lane timeout; the remote bound only steps in if it cannot
            result = transport.run(
                f"lane {ctx.lane.id}",
                _run_script(argv, run_dir, stream.marker),
                timeout_secs=limit,
                on_line=stream,
                check=False,
            )
            elapsed = time.monotonic() - started
        code = result.exit_code
        timed_out = not stream.ended and code in TIMEOUT_EXIT_CODES and elapsed >= limit
        log(f"sandbox exited with {code} after {elapsed:.2f}s on {builder.host}")
        return runner_outcome(ctx, stream.load_result, code, timed_out)

    def collect(self, ctx: JobContext, outcome: Outcome) -> Outcome:
        builder = require_builder(ctx)
        job = RemoteLayout.for_builder(builder).job_dir(ctx.run_id, ctx.lane.id)
        staging = runtime_dir(ctx)
        try:
            pulled = open_transport(ctx, builder).run("collect sandbox", _collect_script(job))
            staging.mkdir(parents=True, exist_ok=True)
            extract_archive(pulled.stdout, staging, ctx.host_log.note)
        except BaseException:
            shutil.rmtree(staging.parent, ignore_errors=True)
            raise
        # the pulled copy goes through the same safe collection as the local sandbox's run dir
        return collect_runtime_dir(ctx, outcome)


def _q(text: str) -> str:
    return shlex.quote(text)


# -- prepare ----------------------------------------------------------------------------------


def _prepare(
    transport: Transport, layout: RemoteLayout, job: str, payload: bytes
) -> Tuple[str, SystemDirs]:
    """Reset the run dir with the request in it (from `payload`, see `_prepare_payload`), make
    sure the profile exists; returns the profile's path and the builder's system-dir layout
    (one round trip)."""
    host = transport.builder.host
    result = transport.run(
        "prepare sandbox", _prepare_script(layout, job), stdin=payload, check=False
    )
    lines = result.text.splitlines()
    if result.exit_code == NO_BWRAP:
        raise SandboxError(
            f"bubblewrap (`bwrap`) is not installed on builder {host}: "
            "install it there (apt-get install bubblewrap)"
        )
    profiles = [line[len("profile ") :] for line in lines if line.startswith("profile /")]
    if result.exit_code != 0 or len(profiles) != 1:
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        raise SandboxError(
            f"preparing the sandbox on {host} failed (exit {result.exit_code})"
            + (f": {last[:200]}" if last else "")
        )
    system_dirs = parse_system_dirs(lines)
    if not any(name == "usr" for name, _ in system_dirs):
        raise SandboxError(f"builder {host} has no /usr to give the sandbox")
    return profiles[0], system_dirs


def _prepare_payload(ctx: JobContext) -> bytes:
    """One tar: the request under `pika-cloud/`, the profile's own files under `profile/`."""
    files: List[Tuple[str, bytes, int]] = [
        (f"{RUN_DIR_NAME}/{guest.REQUEST_FILE}", dumps_pretty(guest_request(ctx)), 0o644),
        (f"profile/bin/{RUNNER_NAME}", runner_source(), 0o555),
    ]
    files += [
        (f"profile/etc/{name}", text.encode(), 0o644)
        for name, text in sorted(profile_etc_files().items())
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


_PREPARE_BODY = r"""
command -v bwrap >/dev/null 2>&1 || { echo "bwrap not found on PATH=$PATH"; exit "$nobwrap"; }
in="$job/prepare-in"
trap 'rm -rf "$in" ${tmp:+"$tmp"}' EXIT
trap 'trap "" TERM INT HUP; exit 143' TERM INT HUP
mkdir -p "$job"
rm -rf "$job/pika-cloud" "$in"
mkdir "$in"
tar -C "$in" --no-same-owner -xf -
mv "$in/pika-cloud" "$job/pika-cloud"
digest=$({ echo "$key"; ls -1A $bins 2>/dev/null; } | sha256sum | cut -c1-16)
sw="$work/sandbox/sw-$digest"
if [ ! -f "$sw/bin/$runner" ]; then
  mkdir -p "$work/sandbox"
  tmp=$(mktemp -d "$work/sandbox/.sw-XXXXXX")
  mkdir "$tmp/bin"
  for d in $bins; do
    [ -d "$d" ] || continue
    set --
    for f in "$d"/*; do
      n=${f##*/}
      if [ -e "$f" ] || [ -L "$f" ]; then
        [ -e "$tmp/bin/$n" ] || [ -L "$tmp/bin/$n" ] || set -- "$@" "$f"
      fi
    done
    [ "$#" -eq 0 ] || ln -s "$@" "$tmp/bin/"
  done
  rm -f "$tmp/bin/$runner"
  cp "$in/profile/bin/$runner" "$tmp/bin/$runner"
  chmod 555 "$tmp/bin/$runner"
  cp -R "$in/profile/etc" "$tmp/etc"
  chmod 755 "$tmp"
  if mv -T "$tmp" "$sw" 2>/dev/null; then tmp=
  elif [ -f "$sw/bin/$runner" ]; then rm -rf "$tmp"; tmp=
  else echo "cannot publish $sw"; exit 4; fi
fi
echo "profile $sw"
"""


def _prepare_script(layout: RemoteLayout, job: str) -> str:
    settings = (
        f"job={_q(job)} work={_q(layout.work_dir)} key={_q(profile_content_digest())} "
        f"runner={_q(RUNNER_NAME)} bins={_q(' '.join(HOST_BINS))} nobwrap={NO_BWRAP}"
    )
    return "set -eu\nexport LC_ALL=C\n" + settings + _PREPARE_BODY + SYSTEM_DIRS_PROBE


# -- run --------------------------------------------------------------------------------------


def _run_script(argv: List[str], run_dir: str, marker: str) -> str:
    result = f"{run_dir}/{guest.RESULT_FILE}"
    return "\n".join(
        [
            "cd /",
            shlex.join(argv),
            "rc=$?",
            # the sandbox is gone (its pid namespace with it): nothing writes after the marker
            f"printf '%s\\n' {_q(marker)}",
            f"if [ -f {_q(result)} ] && [ ! -L {_q(result)} ]; then "
            f"head -c {RESULT_LIMIT} {_q(result)}; fi",
            'exit "$rc"',
        ]
    )


class _RunnerStream:
    """The run's output: the runner's lines into host.log and the console up to the marker, the
    runner's result.json after it."""

    def __init__(self, ctx: JobContext, where: str) -> None:
        self.marker = f"__pikaci_sandbox_result_{secrets.token_hex(16)}__"
        self.where = where
        self.ended = False
        self._emit = streamer(ctx, "[runner:stdout] ")
        self._result: List[str] = []

    def __call__(self, line: str) -> None:
        if line.endswith(self.marker):
            # (reset: after a lost connection the transport may run the script again)
            self.ended, self._result = True, []
            rest = line[: -len(self.marker)]  # the runner's last line may lack its newline
            if rest:
                self._emit(rest)
        elif self.ended:
            self._result.append(line)
        else:
            self._emit(line)

    def load_result(self) -> TerminalResult:
        if not self.ended or not self._result:
            raise FileNotFoundError(f"no {self.where}")
        data = loads_object("\n".join(self._result).encode(), self.where)
        return TerminalResult.from_dict(data, self.where)


# -- collect ----------------------------------------------------------------------------------


_COLLECT_BODY = r"""
[ -d "$run" ] && [ ! -L "$run" ] || { echo "no run directory $run on the builder"; exit 3; }
# the sandbox may have left unreadable modes; chmod -R never follows symlinks it meets
chmod -R u+rwX "$run" 2>/dev/null || true
cd "$run"
set --
for p in artifacts events.jsonl status.json result.json; do
  if [ -e "$p" ] || [ -L "$p" ]; then set -- "$@" "$p"; fi
done
# never through a linked logs/ (tar resolves a path's directories)
if [ -d logs ] && [ ! -L logs ] && { [ -e logs/guest.log ] || [ -L logs/guest.log ]; }; then
  set -- "$@" logs/guest.log
fi
if ! tar -cf - -T /dev/null "$@" 2>"$err"; then cat "$err"; rm -f "$err"; exit 5; fi
rm -f "$err"
# after the whole archive went out; a connection lost past this point fails the collect
cd /
rm -rf "$run"
"""


def _collect_script(job: str) -> str:
    settings = f"run={_q(f'{job}/{RUN_DIR_NAME}')} err={_q(f'{job}/collect.err')}"
    return "set -eu\n" + settings + _COLLECT_BODY
