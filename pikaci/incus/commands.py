"""The pure part of the Incus runtime: names, `incus` argument vectors, parsing, mount planning.

Nothing here runs a process or touches a file. Every builder returns the full argv, starting
with the settings' program prefix (`incus` or `sudo incus`), so the `local` runtime can run it
as is and the `remote_ssh` runtime can quote it into an SSH command. The shapes follow the
system pikaci replaces (properties and config keys sorted, `shift=false` last), and the tests
pin them.

Instances pikaci creates carry an ownership marker in `user.pikaci.*` config keys, so a reaper
can find them with `incus list` and never touches an instance it did not create."""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import (
    Any,
    Collection,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
)

import orjson

from pikaci.incus.config import (
    DEVICE_NAME_MAX,
    GUEST_REQUEST_PATH,
    GUEST_WORKSPACE,
    INSTANCE_PREFIX,
    MOUNT_KINDS,
    OWNER_CREATED_KEY,
    OWNER_RUN_KEY,
    READ_ONLY_IO_BUS,
    READY_PROBE,
    RUNNER_PATH,
    IncusError,
    IncusSettings,
)
from pikaci.model import IncusImage
from pikaci.timestamps import parse_timestamp

# -- names ----------------------------------------------------------------------------------


# device names: FNV-1a 64 over the mount's identity, as the system pikaci replaces names them
_DEVICE_NAME_PATTERN = re.compile(r"^[a-z0-9-]+$")
_ALNUM = frozenset(string.ascii_letters + string.digits)
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1


def instance_name(run_id: str, job_id: str) -> str:
    """`pikaci-` + the first 12 hex digits of SHA-256("<run_id>:<job_id>")."""
    digest = hashlib.sha256(f"{run_id}:{job_id}".encode()).hexdigest()
    return INSTANCE_PREFIX + digest[:12]


def sanitize_component(value: str) -> str:
    """ASCII letters and digits lowercased, anything else `-`, outer dashes trimmed. Runs of
    dashes are kept: the reference hashes were made without collapsing them."""
    mapped = "".join(ch.lower() if ch in _ALNUM else "-" for ch in value)
    return mapped.strip("-")


def fnv1a_64(data: bytes) -> int:
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & _U64
    return value


def snapshot_device_name(source: str, guest_path: str, kind: str = "snapshot") -> str:
    """`pk-<kind[:6]>-<low 32 bits of FNV-1a-64>` over `<kind>-<source>-<guest path>` (both
    sanitized); `source` is the path as given, not resolved."""
    if kind not in MOUNT_KINDS:
        raise IncusError(f"unknown mount kind {kind!r} (expected one of {', '.join(MOUNT_KINDS)})")
    seed = f"{kind}-{sanitize_component(source)}-{sanitize_component(guest_path)}"
    digest = fnv1a_64(seed.encode()) & 0xFFFFFFFF
    return check_device_name(f"pk-{kind[:6]}-{digest:08x}")


def payload_device_name(kind: str, mount_name: str) -> str:
    """`pk-<kind>-<mount>` (sanitized) when it fits, else `pk-<kind[:8]>-<SHA-256 prefix>`."""
    prefix = sanitize_component(kind)
    candidate = f"pk-{prefix}-{sanitize_component(mount_name)}"
    if len(candidate) <= DEVICE_NAME_MAX:
        return check_device_name(candidate)
    digest = hashlib.sha256(candidate.encode()).hexdigest()[:8]
    return check_device_name(f"pk-{prefix[:8]}-{digest}")


def check_device_name(name: str) -> str:
    """`name` if Incus accepts it as pikaci uses it: at most 20 chars of `[a-z0-9-]`."""
    if len(name) > DEVICE_NAME_MAX or _DEVICE_NAME_PATTERN.fullmatch(name) is None:
        raise IncusError(
            f"invalid Incus device name {name!r}: want at most {DEVICE_NAME_MAX} chars of [a-z0-9-]"
        )
    return name


# -- argv builders --------------------------------------------------------------------------


def incus_argv(settings: IncusSettings, *args: str) -> List[str]:
    return [*settings.program, *args]


def image_show_argv(settings: IncusSettings) -> List[str]:
    return incus_argv(
        settings, "image", "show", "--project", settings.project, settings.image_alias
    )


def image_list_argv(settings: IncusSettings) -> List[str]:
    # the alias argument is a filter that also matches other aliases: see parse_image_identity
    return incus_argv(
        settings,
        "image",
        "list",
        "--project",
        settings.project,
        settings.image_alias,
        "--format",
        "json",
    )


def owner_config(run_id: str, created_at: str) -> Dict[str, str]:
    """The ownership marker set on every instance pikaci creates."""
    return {OWNER_RUN_KEY: run_id, OWNER_CREATED_KEY: created_at}


def init_argv(
    settings: IncusSettings, instance: str, owner: Optional[Mapping[str, str]] = None
) -> List[str]:
    """`incus init` with limits and the ownership marker as `--config`, keys sorted."""
    config = {
        "limits.cpu": str(settings.cpus),
        "limits.memory": f"{settings.memory_mib}MiB",
    }
    for key, value in (owner or {}).items():
        # only free-form user keys: the marker must never override a limit
        if not key.startswith("user.") or key in config:
            raise IncusError(f"ownership config key {key!r} is not a `user.` key")
        config[key] = value
    argv = incus_argv(
        settings, "init", "--project", settings.project, "--storage", settings.storage_pool
    )
    for profile in settings.profiles:
        argv += ["--profile", profile]
    for key in sorted(config):
        argv += ["--config", f"{key}={config[key]}"]
    if settings.is_vm:
        argv.append("--vm")
    return [*argv, settings.image_alias, instance]


def device_add_argv(
    settings: IncusSettings,
    instance: str,
    device_name: str,
    source: str,
    guest_path: str,
    read_only: bool,
) -> List[str]:
    """A disk device: properties sorted by key, then `shift=false`. Read-only disks of a VM
    go over virtiofs; containers bind-mount and take no `io.bus`."""
    check_device_name(device_name)
    _check_abs(source, "device source")
    _check_abs(guest_path, "device guest path")
    properties = {"path": guest_path, "source": source}
    if read_only:
        properties["readonly"] = "true"
        if settings.is_vm:
            properties["io.bus"] = READ_ONLY_IO_BUS
    argv = incus_argv(
        settings,
        "config",
        "device",
        "add",
        "--project",
        settings.project,
        instance,
        device_name,
        "disk",
    )
    argv += [f"{key}={properties[key]}" for key in sorted(properties)]
    argv.append("shift=false")
    return argv


def start_argv(settings: IncusSettings, instance: str) -> List[str]:
    return incus_argv(settings, "start", "--project", settings.project, instance)


def exec_argv(
    settings: IncusSettings,
    instance: str,
    argv: Sequence[str],
    user: Optional[int] = None,
    cwd: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
) -> List[str]:
    """`incus exec` of `argv` in the guest; `user` is a uid, `env` is passed sorted."""
    if not argv:
        raise IncusError("incus exec needs a command")
    out = incus_argv(settings, "exec", "--project", settings.project, instance)
    if user is not None:
        out += ["--user", str(user)]
    if cwd is not None:
        out += ["--cwd", cwd]
    for key in sorted(env or {}):
        out += ["--env", f"{key}={(env or {})[key]}"]
    return [*out, "--", *argv]


def ready_probe_argv(settings: IncusSettings, instance: str) -> List[str]:
    return exec_argv(settings, instance, READY_PROBE)


def write_file_argv(settings: IncusSettings, instance: str, path: str) -> List[str]:
    """Writes stdin to `path` in the guest. Plain POSIX `sh -c` with `set -eu`: there is no
    pipe to need `pipefail` (which older shells lack) and no login profile to read."""
    _check_abs(path, "guest file path")
    script = f"set -eu; mkdir -p {shlex.quote(posixpath.dirname(path))}; cat > {shlex.quote(path)}"
    return exec_argv(settings, instance, ["sh", "-c", script])


def read_file_argv(settings: IncusSettings, instance: str, path: str) -> List[str]:
    """Prints a guest file on stdout: how lifecycle files come back (no `incus file pull`)."""
    _check_abs(path, "guest file path")
    return exec_argv(settings, instance, ["cat", path])


def launch_argv(
    settings: IncusSettings, instance: str, request_path: str = GUEST_REQUEST_PATH
) -> List[str]:
    return exec_argv(settings, instance, [RUNNER_PATH, request_path])


def delete_argv(settings: IncusSettings, instance: str) -> List[str]:
    return incus_argv(settings, "delete", "--project", settings.project, "--force", instance)


def info_argv(settings: IncusSettings, instance: str) -> List[str]:
    return incus_argv(settings, "info", "--project", settings.project, instance)


def list_instances_argv(settings: IncusSettings) -> List[str]:
    return incus_argv(settings, "list", "--project", settings.project, "--format", "json")


def _check_abs(path: str, what: str) -> None:
    if not path.startswith("/") or posixpath.normpath(path) != path or "\n" in path:
        raise IncusError(f"{what} must be an absolute, normalized path: {path!r}")


# -- parsing --------------------------------------------------------------------------------


def load_json(text: str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise IncusError(f"{what}: invalid JSON ({exc})") from None


def parse_image_identity(json_text: str, settings: IncusSettings) -> IncusImage:
    """The one image of `incus image list` whose aliases include exactly the configured alias
    (the list filter also matches prefixes such as `pikaci/dev2`)."""
    alias, project = settings.image_alias, settings.project
    what = f"Incus image `{alias}` in project `{project}`"
    records = load_json(json_text, what)
    if not isinstance(records, list):
        raise IncusError(f"{what}: expected a JSON list of images")
    matches = [
        record
        for record in records
        if isinstance(record, dict)
        and isinstance(record.get("aliases"), list)
        and any(isinstance(item, dict) and item.get("name") == alias for item in record["aliases"])
    ]
    if not matches:
        raise IncusError(f"{what}: no image carries exactly this alias")
    if len(matches) > 1:
        raise IncusError(f"{what}: {len(matches)} images carry this alias")
    fingerprint = matches[0].get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise IncusError(f"{what}: the image has no fingerprint")
    return IncusImage(project=project, alias=alias, fingerprint=fingerprint)


class OwnedInstance(NamedTuple):
    name: str
    run_id: str
    created_at: str  # "" when the marker lacks it


def parse_owned_instances(json_text: str) -> List[OwnedInstance]:
    """Instances of `incus list --format json` that carry pikaci's ownership marker."""
    records = load_json(json_text, "incus list")
    if not isinstance(records, list):
        raise IncusError("incus list: expected a JSON list of instances")
    owned: List[OwnedInstance] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise IncusError(f"incus list: item {index} is not an object")
        name, config = record.get("name"), record.get("config")
        if not isinstance(name, str) or not name or not isinstance(config, dict):
            continue
        run_id = config.get(OWNER_RUN_KEY)
        if not isinstance(run_id, str) or not run_id:
            continue
        created_at = config.get(OWNER_CREATED_KEY)
        owned.append(OwnedInstance(name, run_id, created_at if isinstance(created_at, str) else ""))
    return owned


def reap_candidates(
    owned: Sequence[OwnedInstance],
    now: datetime,
    older_than_secs: float,
    keep_run_ids: Collection[str] = (),
) -> List[str]:
    """Names of owned instances created at least `older_than_secs` before `now`, sorted.

    An instance whose creation time is missing or unreadable is left alone: its age is
    unknown and it may belong to a run still in progress. So is any of `keep_run_ids`.
    """
    cutoff = now - timedelta(seconds=older_than_secs)
    names: Set[str] = set()
    for item in owned:
        if item.run_id in keep_run_ids:
            continue
        try:
            created = parse_timestamp(item.created_at)
        except ValueError:
            continue
        if created <= cutoff:
            names.add(item.name)
    return sorted(names)


# -- mount planning -------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestMount:
    device_name: str
    source: str
    guest_path: str
    read_only: bool


# (host source, guest path, manifest kind, manifest mount name)
PayloadMountSpec = Tuple[str, str, str, str]


def plan_mounts(
    snapshot_source: str, payload_mounts: Sequence[PayloadMountSpec]
) -> List[GuestMount]:
    """The snapshot at /workspace/snapshot, then every payload mount; all read-only (staged
    payloads are store paths). Two mounts may share neither a guest path nor a device name."""
    mounts = [
        GuestMount(
            snapshot_device_name(snapshot_source, GUEST_WORKSPACE),
            snapshot_source,
            GUEST_WORKSPACE,
            True,
        )
    ]
    for source, guest_path, kind, mount_name in payload_mounts:
        mounts.append(GuestMount(payload_device_name(kind, mount_name), source, guest_path, True))
    paths: Dict[str, GuestMount] = {}
    devices: Dict[str, GuestMount] = {}
    for mount in mounts:
        _check_abs(mount.source, "mount source")
        _check_abs(mount.guest_path, "mount guest path")
        if mount.guest_path in paths:
            raise IncusError(
                f"guest path {mount.guest_path} is mounted twice "
                f"({paths[mount.guest_path].source} and {mount.source})"
            )
        if mount.device_name in devices:
            raise IncusError(
                f"Incus device name {mount.device_name} is used twice "
                f"({devices[mount.device_name].guest_path} and {mount.guest_path})"
            )
        paths[mount.guest_path] = mount
        devices[mount.device_name] = mount
    return mounts


def plan_devices(
    settings: IncusSettings,
    instance: str,
    snapshot_source: str,
    payload_mounts: Sequence[PayloadMountSpec],
) -> List[List[str]]:
    """`incus config device add` argv for every mount of `plan_mounts`, in order."""
    return [
        device_add_argv(settings, instance, m.device_name, m.source, m.guest_path, m.read_only)
        for m in plan_mounts(snapshot_source, payload_mounts)
    ]
