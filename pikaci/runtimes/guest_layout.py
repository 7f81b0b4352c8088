"""The Incus guest's layout in bubblewrap: what the local and the remote sandbox share.

Inside the sandbox a lane sees what it would see in the guest image:

    /workspace/snapshot              the target's snapshot, read-only
    <manifest guest paths>           each staged payload mount, read-only
    /run/pika-cloud                  the runner's directory (request, logs, lifecycle, artifacts)
    /run/current-system/sw/bin       the system profile: host tools + pikaci-incus-run
    /home/pikaci, /cargo-home, /cargo-target, /tmp   private and empty
    /usr (+ /bin, /lib... links)     the host system, read-only

and runs as uid 1000 (`pikaci`) unless the lane asks for root, without network unless it asks
for it, in its own pid namespace, killed with its parent. The same guest runner reads the same
request file as in an Incus guest.

Everything here is independent of where the sandbox runs: the host's system directories are an
input (`SystemDirs`, probed on this machine or on a builder), paths are plain strings, and the
collection works on a local copy of the runner's directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from pikaci.confined import read_json_below
from pikaci.guest import runner as guest
from pikaci.model import RecordError, TerminalResult
from pikaci.payloads.manifest import PayloadMount
from pikaci.payloads.staged import StagedOutput
from pikaci.runtimes.base import JobContext, Outcome, write_result

BWRAP = "bwrap"
GUEST_SW = guest.SYSTEM_SW
GUEST_WORKSPACE = guest.DEFAULT_DIRS["workspace_dir"]
# a bounding `timeout` fired: TERM (124), or KILL (137) after its grace
TIMEOUT_EXIT_CODES = (124, 137)
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
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
HOST_BINS = ("/usr/bin", "/usr/sbin")  # their tools are linked into the system profile
_ETC_FILES = ("ssl", "ca-certificates", "alternatives", "ld.so.cache", "localtime")
# the runner's files; a lane's own artifacts never take these names
LIFECYCLE_FILES = {
    "guest.log": ("logs", "guest.log"),
    "events.jsonl": ("events.jsonl",),
    "status.json": ("status.json",),
    "result.json": ("result.json",),
}

# (name, symlink target) for each of SYSTEM_DIRS present on the host; None: a real directory
SystemDirs = Tuple[Tuple[str, Optional[str]], ...]
Log = Callable[[str], None]


class SandboxError(Exception):
    pass


# -- the host's layout ------------------------------------------------------------------------


def probe_system_dirs(root: Path = Path("/")) -> SystemDirs:
    """SYSTEM_DIRS as they are on this machine."""
    found: List[Tuple[str, Optional[str]]] = []
    for name in SYSTEM_DIRS:
        host = root / name
        if host.is_symlink():
            found.append((name, str(host.readlink())))
        elif host.is_dir():
            found.append((name, None))
    return tuple(found)


SYSTEM_DIRS_PROBE = (
    "for d in " + " ".join(SYSTEM_DIRS) + "; do\n"
    '  if [ -L "/$d" ]; then printf \'sysdir %s link %s\\n\' "$d" "$(readlink "/$d")"\n'
    '  elif [ -d "/$d" ]; then printf \'sysdir %s dir\\n\' "$d"; fi\n'
    "done"
)
"""The same probe as POSIX sh, for another host; `parse_system_dirs` reads its output."""


def parse_system_dirs(lines: Iterable[str]) -> SystemDirs:
    found: Dict[str, Optional[str]] = {}
    for line in lines:
        words = line.split(" ", 3)
        if len(words) < 3 or words[0] != "sysdir" or words[1] not in SYSTEM_DIRS:
            continue
        if words[2] == "dir" and len(words) == 3:
            found[words[1]] = None
        elif words[2] == "link" and len(words) == 4 and words[3]:
            found[words[1]] = words[3]
    return tuple((name, found[name]) for name in SYSTEM_DIRS if name in found)


# -- the request and the payload mounts -------------------------------------------------------


def guest_request(ctx: JobContext) -> Dict[str, Any]:
    """The runner's request: the image defaults for every directory."""
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
    return guest.request_to_dict(request)


# every mount of one staged output with the host path it is bound from
MountSources = Callable[[StagedOutput], Sequence[Tuple[PayloadMount, str]]]


def payload_mounts(
    payloads: Sequence[StagedOutput], sources: MountSources
) -> List[Tuple[str, str]]:
    """(host source, guest path) for every mount of every staged payload, validated first:
    no mount may touch the layout's own paths, no two may share a guest path."""
    mounts: List[Tuple[str, str]] = []
    seen = {GUEST_WORKSPACE}
    for output in payloads:
        for mount, source in sources(output):
            clash = _reserved_clash(mount.guest_path)
            if clash is not None:
                raise SandboxError(
                    f"{output.label}: mount `{mount.name}` guest path "
                    f"{mount.guest_path} collides with the guest layout ({clash})"
                )
            if mount.guest_path in seen:
                raise SandboxError(
                    f"{output.label}: mount `{mount.name}` reuses guest path {mount.guest_path}"
                )
            seen.add(mount.guest_path)
            mounts.append((source, mount.guest_path))
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


# -- the sandbox ------------------------------------------------------------------------------


def bwrap_command(
    *,
    system: str,
    run_dir: str,
    snapshot_dir: str,
    mounts: Sequence[Tuple[str, str]],
    system_dirs: SystemDirs,
    run_as_root: bool,
    network: bool,
    env: Sequence[Tuple[str, str]] = (),
) -> List[str]:
    """The full bubblewrap invocation for a host laid out as `system_dirs` (pure: tests pin
    its shape). Every path is one on the host that runs it."""
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
        "--setenv",
        guest.KIND_ENV,
        "bubblewrap",  # the runner's boot line names this guest, not Incus
        *[arg for name, value in env for arg in ("--setenv", name, value)],
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    for name, link in system_dirs:
        if link is not None:
            argv += ["--symlink", link, f"/{name}"]
        else:
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
    argv += ["--dir", "/etc"]
    for name in ("passwd", "group"):
        argv += ["--ro-bind", f"{system}/etc/{name}", f"/etc/{name}"]
    for name in _ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    if network:
        argv += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
        argv += ["--ro-bind-try", "/etc/hosts", "/etc/hosts"]
    else:
        argv += ["--ro-bind", f"{system}/etc/hosts", "/etc/hosts"]  # localhost resolves
    argv += [
        "--tmpfs",
        "/run",
        "--ro-bind",
        system,
        GUEST_SW,
        "--bind",
        run_dir,
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
        snapshot_dir,
        GUEST_WORKSPACE,
    ]
    for source, target in mounts:
        argv += ["--ro-bind", source, target]
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


# -- the system profile -----------------------------------------------------------------------


def runner_source() -> bytes:
    return Path(guest.__file__).read_bytes()


def profile_etc_files() -> Dict[str, str]:
    """The profile's `etc/` files, by name: the guest's users and a resolvable localhost."""
    return {
        "passwd": (
            "root:x:0:0:root:/root:/run/current-system/sw/bin/bash\n"
            f"{guest.GUEST_USER}:x:{guest.GUEST_UID}:{guest.GUEST_GID}:pikaci:/home/pikaci:"
            "/run/current-system/sw/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\nusers:x:{guest.GUEST_GID}:{guest.GUEST_USER}\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    }


def profile_content_digest() -> str:
    """SHA-256 of what pikaci puts into a profile (the runner and `etc/`); the host's tool
    list completes a profile's key wherever it is made."""
    digest = hashlib.sha256(f"profile-v{PROFILE_VERSION}\n".encode())
    digest.update(runner_source())
    for name, text in sorted(profile_etc_files().items()):
        digest.update(f"\n{name}\n{text}".encode())
    return digest.hexdigest()


# -- the verdict and the collection -----------------------------------------------------------


def runtime_dir(ctx: JobContext) -> Path:
    """The job's local copy of the runner's directory (the run dir itself for a local lane)."""
    return ctx.job_dir / "runtime" / "pika-cloud"


def _host_verdict_marker(ctx: JobContext) -> Path:
    return runtime_dir(ctx).parent / HOST_VERDICT


def runner_outcome(
    ctx: JobContext,
    load_result: Callable[[], TerminalResult],
    code: Optional[int],
    timed_out: bool,
) -> Outcome:
    """The lane's outcome once the sandbox is gone: the runner's result, or the host's own
    verdict (written to the job's result.json and kept over anything collected later) when the
    host had to kill the sandbox or the runner left no usable result."""
    if timed_out:
        outcome = Outcome.failure(f"timed out after {ctx.lane.timeout_secs}s", exit_code=124)
    else:
        try:
            return Outcome.from_result(load_result())
        except (OSError, RecordError) as exc:
            message = f"guest runner left no usable result (exit {code}): {exc}"
            outcome = Outcome.failure(message, code)
    write_result(ctx, outcome)
    marker = _host_verdict_marker(ctx)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()  # nothing from the sandbox overrides it
    return outcome


def result_file_loader(ctx: JobContext, path: Path) -> Callable[[], TerminalResult]:
    """Reads a result.json the lane could have replaced (a link, a FIFO, a huge file): below
    the job directory, links refused at every step, regular files only."""
    return lambda: load_result(ctx, path)


def load_result(ctx: JobContext, path: Path) -> TerminalResult:
    return TerminalResult.from_dict(read_json_below(ctx.job_dir, path), str(path))


def collect_runtime_dir(ctx: JobContext, outcome: Outcome) -> Outcome:
    """Bring `runtime_dir(ctx)` into the job's artifacts, remove it, and return the verdict
    the job's result.json then holds."""
    run_dir = runtime_dir(ctx)
    keep_result = _host_verdict_marker(ctx).exists()
    try:
        collect_run_dir(run_dir, ctx.artifacts_dir, ctx.host_log.note, keep_result=keep_result)
    finally:
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    try:
        result = load_result(ctx, ctx.result_path)
    except (OSError, RecordError) as exc:
        return Outcome.failure(f"collect: no usable result.json: {exc}", outcome.exit_code)
    return Outcome.from_result(result)


def collect_run_dir(run_dir: Path, artifacts: Path, log: Log, keep_result: bool) -> None:
    """The runner's files into the job's artifacts: the lane's own files, then the lifecycle.

    Everything under `run_dir` was writable from inside the sandbox, so nothing here follows a
    symlink or writes through one: only regular files and directories are copied (others are
    reported), and destinations are replaced, never opened in place. `keep_result` keeps the
    host's own result.json (a host-side verdict) over anything found in the sandbox.
    """
    lane_artifacts = run_dir / guest.ARTIFACTS_DIR
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


def _copy_safely(source: Path, destination: Path, log: Log) -> None:
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
