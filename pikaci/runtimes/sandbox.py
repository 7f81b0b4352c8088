"""`local` + `bubblewrap`: the guest layout of the Incus image, on this machine, in bubblewrap.

Inside the sandbox a lane sees what it would see in the guest image:

    /workspace/snapshot              the target's snapshot, read-only
    <manifest guest paths>           each staged payload mount, read-only
    /run/pika-cloud                  the runner's directory (request, logs, lifecycle, artifacts)
    /run/current-system/sw/bin       the system profile: host tools + pikaci-incus-run
    /home/pikaci, /cargo-home, /cargo-target, /tmp   private and empty
    /usr (+ /bin, /lib... links)     the host system, read-only

and runs as uid 1000 (`pikaci`) unless the lane asks for root, without network unless it asks
for it, in its own pid namespace, killed with its parent. The same guest runner reads the same
request file as in an Incus guest; its lifecycle files are collected into the job's artifacts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from pikaci.guest import runner as guest
from pikaci.model import RecordError, TerminalResult
from pikaci.payload import ManifestError, mount_sources
from pikaci.runtimes.base import JobContext, Outcome, write_result
from pikaci.runtimes.process import run_streamed
from pikaci.store import file_lock, read_json_object, write_json

BWRAP = "bwrap"
GUEST_SW = "/run/current-system/sw"
GUEST_WORKSPACE = "/workspace/snapshot"
RUNNER_NAME = "pikaci-incus-run"
# the runner enforces the lane timeout itself; the host waits this much longer before killing
HOST_TIMEOUT_GRACE_SECS = 30
PROFILE_VERSION = 2  # bump when the generated profile's contents change
HOST_VERDICT = "host-verdict"  # marker: the host decided the outcome (timeout, no result)
# guest paths of the layout itself: a payload mount may not cover, replace or sit inside them
RESERVED_GUEST_PATHS = (
    "/proc",
    "/dev",
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/tmp",
    "/root",
    "/home",
    "/cargo-home",
    "/cargo-target",
    "/run",
    GUEST_WORKSPACE,
)
# host directories a guest system needs, bound read-only (or recreated as the same symlink)
_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_FILES = ("ssl", "ca-certificates", "alternatives", "ld.so.cache", "localtime")
_HOST_BINS = (Path("/usr/bin"), Path("/usr/sbin"))


class SandboxError(Exception):
    pass


class BubblewrapRuntime:
    def execute(self, ctx: JobContext) -> Outcome:
        if shutil.which(BWRAP) is None:
            raise SandboxError("bubblewrap (`bwrap`) is not installed: apt-get install bubblewrap")
        system = prepare_system_profile(ctx.state.cache_dir / "sandbox")
        run_dir = _runtime_dir(ctx)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        request = guest.GuestRequest(
            schema_version=guest.REQUEST_SCHEMA_VERSION,
            command=ctx.lane.command,
            timeout_secs=ctx.lane.timeout_secs,
            run_as_root=ctx.lane.run_as_root,
            workspace_dir=None,
            cargo_home_dir=None,
            cargo_target_dir=None,
            xdg_state_home_dir=None,
            home_dir=None,
        )
        write_json(run_dir / guest.REQUEST_FILE, guest.request_to_dict(request))
        mounts = payload_mounts(ctx)
        argv = bwrap_command(
            system=system,
            run_dir=run_dir,
            snapshot_dir=ctx.snapshot_dir,
            mounts=mounts,
            run_as_root=ctx.lane.run_as_root,
            network=ctx.lane.network,
            env=sorted(ctx.lane.env.items()),
        )
        ctx.host_log.note(f"sandbox command: {argv!r}")
        for source, target in mounts:
            ctx.host_log.note(f"payload mount: {target} <- {source} (read-only)")
        started = time.monotonic()
        # the runner enforces the lane timeout; the host only steps in if it cannot
        code, timed_out = run_streamed(
            ctx, argv, ctx.lane.timeout_secs + HOST_TIMEOUT_GRACE_SECS, b"[runner:stdout] "
        )
        ctx.host_log.note(f"sandbox exited with {code} after {time.monotonic() - started:.2f}s")
        return _outcome(ctx, run_dir, code, timed_out)

    def collect(self, ctx: JobContext, outcome: Outcome) -> Outcome:
        run_dir = _runtime_dir(ctx)
        host_verdict = (run_dir.parent / HOST_VERDICT).exists()
        try:
            _collect(run_dir, ctx.artifacts_dir, ctx.host_log.note, keep_result=host_verdict)
        finally:
            shutil.rmtree(run_dir.parent, ignore_errors=True)
        try:
            result = TerminalResult.from_dict(
                read_json_object(ctx.result_path), str(ctx.result_path)
            )
        except (FileNotFoundError, RecordError) as exc:
            return Outcome.failure(f"collect: no usable result.json: {exc}", outcome.exit_code)
        return Outcome.from_result(result)


def _runtime_dir(ctx: JobContext) -> Path:
    return ctx.job_dir / "runtime" / "pika-cloud"


def payload_mounts(ctx: JobContext) -> List[Tuple[Path, str]]:
    """(host source, guest path) for every mount of every staged payload, validated first."""
    mounts: List[Tuple[Path, str]] = []
    seen = {GUEST_WORKSPACE}
    for output in ctx.payloads:
        try:
            sources = mount_sources(output.store_path, output.manifest, output.label)
        except ManifestError as exc:
            raise SandboxError(str(exc)) from None
        for item in sources:
            clash = _reserved_clash(item.mount.guest_path)
            if clash is not None:
                raise SandboxError(
                    f"{output.label}: mount `{item.mount.name}` guest path "
                    f"{item.mount.guest_path} collides with the guest layout ({clash})"
                )
            if item.mount.guest_path in seen:
                raise SandboxError(
                    f"{output.label}: mount `{item.mount.name}` reuses guest path "
                    f"{item.mount.guest_path}"
                )
            seen.add(item.mount.guest_path)
            mounts.append((item.source, item.mount.guest_path))
    return mounts


def _reserved_clash(guest_path: str) -> Optional[str]:
    for reserved in RESERVED_GUEST_PATHS:
        if (
            guest_path == reserved
            or guest_path.startswith(reserved + "/")
            or reserved.startswith(guest_path + "/")
        ):
            return reserved
    return None


def bwrap_command(
    *,
    system: Path,
    run_dir: Path,
    snapshot_dir: Path,
    mounts: Sequence[Tuple[Path, str]],
    run_as_root: bool,
    network: bool,
    env: Sequence[Tuple[str, str]] = (),
) -> List[str]:
    """The full bubblewrap invocation (pure: tests pin its shape)."""
    uid, gid = (0, 0) if run_as_root else (guest.GUEST_UID, guest.GUEST_GID)
    argv = [
        BWRAP,
        "--die-with-parent",
        "--new-session",
        "--unshare-all",
        *(["--share-net"] if network else []),
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",  # the runner puts the system profile first
        "--setenv",
        "LANG",
        "C.UTF-8",
        *[arg for name, value in env for arg in ("--setenv", name, value)],
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    for name in _SYSTEM_DIRS:
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", str(host.readlink()), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    argv += ["--dir", "/etc"]
    for name in ("passwd", "group"):
        argv += ["--ro-bind", str(system / "etc" / name), f"/etc/{name}"]
    for name in _ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    if network:
        argv += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
        argv += ["--ro-bind-try", "/etc/hosts", "/etc/hosts"]
    else:
        argv += ["--ro-bind", str(system / "etc" / "hosts"), "/etc/hosts"]  # localhost resolves
    argv += [
        "--tmpfs",
        "/run",
        "--ro-bind",
        str(system),
        GUEST_SW,
        "--bind",
        str(run_dir),
        guest.DEFAULT_RUN_DIR,
        "--tmpfs",
        "/home",
        "--dir",
        "/home/pikaci",
        "--dir",
        "/root",
        "--tmpfs",
        "/cargo-home",
        "--tmpfs",
        "/cargo-target",
        "--ro-bind",
        str(snapshot_dir),
        GUEST_WORKSPACE,
    ]
    for source, target in mounts:
        argv += ["--ro-bind", str(source), target]
    if not run_as_root:
        # the runner leaves these to the unprivileged user; tmpfs mounts start root-owned
        for path in ("/home/pikaci", "/cargo-home", "/cargo-target"):
            argv += ["--chmod", "1777", path]
    argv += [
        "--chdir",
        GUEST_WORKSPACE,
        "--",
        f"{GUEST_SW}/bin/{RUNNER_NAME}",
        f"{guest.DEFAULT_RUN_DIR}/{guest.REQUEST_FILE}",
    ]
    return argv


def prepare_system_profile(root: Path) -> Path:
    """The guest's `/run/current-system/sw`: host tools plus the runner, made once per content.

    Keyed by the runner's bytes and the host's tool list, published by rename so concurrent
    lanes never see half of it.
    """
    runner_source = Path(guest.__file__).read_bytes()
    tools = sorted(
        (entry.name, str(directory / entry.name))
        for directory in _HOST_BINS
        if directory.is_dir()
        for entry in os.scandir(directory)
    )
    layout = f"profile-v{PROFILE_VERSION}:{tools!r}".encode()
    digest = hashlib.sha256(runner_source + layout).hexdigest()[:16]
    target = root / f"sw-{digest}"
    if (target / "bin" / RUNNER_NAME).is_file():
        return target
    with file_lock(root / ".lock"):
        if (target / "bin" / RUNNER_NAME).is_file():
            return target
        staging = root / f".sw-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        for name, path in tools:
            link = staging / "bin" / name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(path)
        runner = staging / "bin" / RUNNER_NAME
        if runner.is_symlink():
            runner.unlink()
        runner.write_bytes(runner_source)
        runner.chmod(0o555)
        (staging / "etc").mkdir()
        (staging / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/run/current-system/sw/bin/bash\n"
            f"{guest.GUEST_USER}:x:{guest.GUEST_UID}:{guest.GUEST_GID}:pikaci:/home/pikaci:"
            "/run/current-system/sw/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (staging / "etc" / "hosts").write_text(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
        )
        (staging / "etc" / "group").write_text(
            f"root:x:0:\nusers:x:{guest.GUEST_GID}:{guest.GUEST_USER}\nnogroup:x:65534:\n"
        )
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def _outcome(ctx: JobContext, run_dir: Path, code: Optional[int], timed_out: bool) -> Outcome:
    if timed_out:
        outcome = Outcome.failure(f"timed out after {ctx.lane.timeout_secs}s", exit_code=124)
        write_result(ctx, outcome)
        (run_dir.parent / HOST_VERDICT).touch()  # nothing from the sandbox overrides it
        return outcome
    path = run_dir / "result.json"
    try:
        result = TerminalResult.from_dict(read_json_object(path), str(path))
    except (FileNotFoundError, RecordError) as exc:
        outcome = Outcome.failure(f"guest runner left no usable result (exit {code}): {exc}", code)
        write_result(ctx, outcome)
        (run_dir.parent / HOST_VERDICT).touch()
        return outcome
    return Outcome.from_result(result)


# the runner's files; a lane's own artifacts never take these names
LIFECYCLE_FILES = {
    "guest.log": ("logs", "guest.log"),
    "events.jsonl": ("events.jsonl",),
    "status.json": ("status.json",),
    "result.json": ("result.json",),
}


def _collect(run_dir: Path, artifacts: Path, log: Callable[[str], None], keep_result: bool) -> None:
    """The runner's files into the job's artifacts: the lane's own files, then the lifecycle.

    Everything under `run_dir` was writable from inside the sandbox, so nothing here follows a
    symlink or writes through one: only regular files and directories are copied (others are
    reported), and destinations are replaced, never opened in place. `keep_result` keeps the
    host's own result.json (a host-side timeout) over anything found in the sandbox.
    """
    lane_artifacts = run_dir / "artifacts"
    if _is_real_dir(lane_artifacts):
        for entry in sorted(lane_artifacts.iterdir()):
            if entry.name in LIFECYCLE_FILES:
                log(f"collect: skipped artifact `{entry.name}`: the name is the runner's")
                continue
            _copy_safely(entry, artifacts / entry.name, log)
    for name, parts in LIFECYCLE_FILES.items():
        if name == "result.json" and keep_result:
            continue
        source = run_dir.joinpath(*parts)
        if os.path.lexists(source):
            _copy_safely(source, artifacts / name, log)


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _copy_safely(source: Path, destination: Path, log: Callable[[str], None]) -> None:
    if _is_real_dir(source):
        destination.mkdir(exist_ok=True)
        for entry in sorted(source.iterdir()):
            _copy_safely(entry, destination / entry.name, log)
        return
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        log(f"collect: skipped `{source.name}`: not a regular file (symlinks are not followed)")
        return
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            log(f"collect: skipped `{source.name}`: not a regular file")
            return
        if os.path.lexists(destination) and not _is_real_dir(destination):
            destination.unlink()  # never write through whatever is there
        with open(destination, "xb") as out:
            shutil.copyfileobj(handle, out)
