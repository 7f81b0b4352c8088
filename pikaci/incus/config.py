"""Incus settings: the defaults and environment names of the system pikaci replaces, the guest
paths and lifecycle files, and the vocabulary the commands are built from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import (
    Mapping,
    Tuple,
)

from pikaci.guest import runner as guest

# -- defaults and vocabulary ----------------------------------------------------------------

BACKEND = "incus"
DEFAULT_PROJECT = "pika-managed-agents"
DEFAULT_PROFILE = "pika-agent-dev"
DEFAULT_IMAGE_ALIAS = "pikaci/dev"
DEFAULT_STORAGE_POOL = "default"
# how an instance comes to exist: `incus init` from the image (a snapshot of it on a
# copy-on-write pool), `incus copy` of a prepared base instance (a plain copy on a `dir` pool,
# much cheaper than unpacking the image), or the better of the two for the pool's driver
CREATE_AUTO = "auto"
CREATE_IMAGE = "image"
CREATE_COPY = "copy"
CREATE_MODES = (CREATE_AUTO, CREATE_IMAGE, CREATE_COPY)
COPY_ON_WRITE_DRIVERS = ("btrfs", "zfs", "lvm", "lvmcluster", "ceph")
DEFAULT_CPUS = 2
DEFAULT_MEMORY_MIB = 4096
DEFAULT_READY_ATTEMPTS = 120
DEFAULT_READY_INTERVAL_SECS = 1.0
BASE_PROFILE = "default"  # always applied first; a custom profile is layered on top

INSTANCE_VM = "vm"
INSTANCE_CONTAINER = "container"
INSTANCE_TYPES = (INSTANCE_VM, INSTANCE_CONTAINER)

INSTANCE_PREFIX = "pikaci-"
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # also safe in an API path
READ_ONLY_IO_BUS = "virtiofs"

# ownership marker: the run that created an instance and when; `user.*` keys are free-form
OWNER_KEY_PREFIX = "user.pikaci."
OWNER_RUN_KEY = OWNER_KEY_PREFIX + "run-id"
OWNER_CREATED_KEY = OWNER_KEY_PREFIX + "created-at"

# timed into `remote_linux_vm_execution.phases`, in this order
PHASES = (
    "prepare_directories",
    "stage_workspace_snapshot",
    "prepare_runtime",
    "launch_guest",
    "wait_for_completion",
    "collect_artifacts",
)

# guest side: the image's runner and the files it reads and writes (same as the sandbox layout)
# marked instances older than this are leftovers of runs that died: reaped before creating new
REAP_AFTER_SECS = 6 * 3600
GUEST_WORKSPACE = guest.DEFAULT_DIRS["workspace_dir"]
RUNNER_PATH = guest.RUNNER_PATH  # /run/current-system/sw/bin/pikaci-incus-run
GUEST_RUN_DIR = guest.DEFAULT_RUN_DIR  # /run/pika-cloud
# same file name as upstream (`guest-request.json`), taken from the runner itself
GUEST_REQUEST_PATH = f"{GUEST_RUN_DIR}/{guest.REQUEST_FILE}"
# a command that succeeds once `incus exec` works, i.e. the guest agent is up
READY_PROBE: Tuple[str, ...] = ("true",)
# (guest path, artifact name) of every lifecycle file collected after the run
LIFECYCLE_FILES: Tuple[Tuple[str, str], ...] = (
    (f"{GUEST_RUN_DIR}/{guest.LOGS_DIR}/{guest.GUEST_LOG}", guest.GUEST_LOG),
    (f"{GUEST_RUN_DIR}/{guest.EVENTS_FILE}", guest.EVENTS_FILE),
    (f"{GUEST_RUN_DIR}/{guest.STATUS_FILE}", guest.STATUS_FILE),
    (f"{GUEST_RUN_DIR}/{guest.RESULT_FILE}", guest.RESULT_FILE),
)

# device names: Incus's limit as the system pikaci replaces enforced it
DEVICE_NAME_MAX = 20
MOUNT_KINDS = ("persist", "snapshot", "artifact", "cache")

# environment
ENV_PROJECT = "PIKACI_INCUS_PROJECT"
ENV_PROFILE = "PIKACI_INCUS_PROFILE"
ENV_IMAGE_ALIAS = "PIKACI_INCUS_IMAGE_ALIAS"
ENV_INSTANCE_TYPE = "PIKACI_INCUS_INSTANCE_TYPE"
ENV_SUDO = "PIKACI_INCUS_SUDO"
ENV_STORAGE_POOL = "PIKACI_INCUS_STORAGE_POOL"
ENV_CREATE = "PIKACI_INCUS_CREATE"
# the names the replaced system read; ours win when both are set
LEGACY_ENV = {
    ENV_PROJECT: "PIKACI_REMOTE_LINUX_VM_INCUS_PROJECT",
    ENV_PROFILE: "PIKACI_REMOTE_LINUX_VM_INCUS_PROFILE",
    ENV_IMAGE_ALIAS: "PIKACI_REMOTE_LINUX_VM_INCUS_IMAGE_ALIAS",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class IncusError(Exception):
    """An Incus plan or an `incus` answer is unusable; `str()` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncusSettings:
    project: str = DEFAULT_PROJECT
    profile: str = DEFAULT_PROFILE  # "" or "default": only the `default` profile
    image_alias: str = DEFAULT_IMAGE_ALIAS
    instance_type: str = INSTANCE_VM
    cpus: int = DEFAULT_CPUS
    memory_mib: int = DEFAULT_MEMORY_MIB
    storage_pool: str = DEFAULT_STORAGE_POOL
    create: str = CREATE_AUTO
    ready_attempts: int = DEFAULT_READY_ATTEMPTS
    ready_interval_secs: float = DEFAULT_READY_INTERVAL_SECS
    program: Tuple[str, ...] = ("incus",)

    def __post_init__(self) -> None:
        # a list is accepted for convenience; stored as a tuple so the settings stay hashable
        object.__setattr__(self, "program", tuple(self.program))
        for name in ("project", "image_alias", "storage_pool"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Incus {name} must be a non-empty string")
        if not isinstance(self.profile, str):
            raise ValueError("Incus profile must be a string")
        if not POOL_NAME.fullmatch(self.storage_pool):
            raise ValueError(f"Incus storage pool name {self.storage_pool!r} is not valid")
        if self.create not in CREATE_MODES:
            raise ValueError(
                f"Incus create must be one of {', '.join(CREATE_MODES)}, got {self.create!r}"
            )
        if self.instance_type not in INSTANCE_TYPES:
            raise ValueError(
                f"Incus instance type must be one of {', '.join(INSTANCE_TYPES)}, "
                f"got {self.instance_type!r}"
            )
        for name in ("cpus", "memory_mib", "ready_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Incus {name} must be a positive integer, got {value!r}")
        if self.ready_interval_secs < 0:
            raise ValueError("Incus ready_interval_secs must not be negative")
        if not self.program or not all(isinstance(arg, str) and arg for arg in self.program):
            raise ValueError("Incus program must be a non-empty list of non-empty strings")

    @property
    def is_vm(self) -> bool:
        return self.instance_type == INSTANCE_VM

    @property
    def profiles(self) -> Tuple[str, ...]:
        """The `--profile` arguments in order: `default`, then the custom one if any."""
        if self.profile in ("", BASE_PROFILE):
            return (BASE_PROFILE,)
        return (BASE_PROFILE, self.profile)


def incus_settings_from_environment(
    env: Mapping[str, str], sudo_default: bool = False
) -> IncusSettings:
    """Settings from `PIKACI_INCUS_*` (upstream's `PIKACI_REMOTE_LINUX_VM_INCUS_*` names as
    fallbacks). An empty value counts as unset. Bad values raise ValueError naming the
    variable. `sudo_default` lets a remote runtime default to `sudo incus` like upstream."""
    instance_type = _env(env, ENV_INSTANCE_TYPE).lower() or INSTANCE_VM
    if instance_type not in INSTANCE_TYPES:
        raise ValueError(
            f"{ENV_INSTANCE_TYPE} must be one of {', '.join(INSTANCE_TYPES)}, "
            f"got {env.get(ENV_INSTANCE_TYPE)!r}"
        )
    sudo = _env_bool(env, ENV_SUDO, sudo_default)
    pool = _env(env, ENV_STORAGE_POOL) or DEFAULT_STORAGE_POOL
    if not POOL_NAME.fullmatch(pool):
        raise ValueError(f"{ENV_STORAGE_POOL}: not a storage pool name: {pool!r}")
    create = _env(env, ENV_CREATE).lower() or CREATE_AUTO
    if create not in CREATE_MODES:
        raise ValueError(
            f"{ENV_CREATE} must be one of {', '.join(CREATE_MODES)}, got {env.get(ENV_CREATE)!r}"
        )
    return IncusSettings(
        project=_env(env, ENV_PROJECT) or DEFAULT_PROJECT,
        profile=_env(env, ENV_PROFILE) or DEFAULT_PROFILE,
        image_alias=_env(env, ENV_IMAGE_ALIAS) or DEFAULT_IMAGE_ALIAS,
        instance_type=instance_type,
        storage_pool=pool,
        create=create,
        program=("sudo", "incus") if sudo else ("incus",),
    )


def _env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    legacy = LEGACY_ENV.get(name)
    if not value and legacy is not None:
        value = env.get(legacy, "").strip()
    return value


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {value!r}")
