"""How a lane's instance comes to exist, and the prepared base instances that make it cheap on
a storage pool without copy-on-write.

`incus init <image>` costs what the pool makes of it: on a copy-on-write pool (btrfs, zfs, lvm
thin, ceph) the image is unpacked once into an image volume and every instance is a snapshot
of it (about 0.05 s here); on a `dir` pool every instance unpacks the image again (about 6 s
here for a 160 MB Debian minbase; more for a NixOS image). On such a pool pikaci keeps one
stopped *base* instance per image and settings, made once from the image, and creates each lane's
instance with `incus copy` of it (about 1 s here: a file copy, no decompression).

`PIKACI_INCUS_CREATE` chooses: `image`, `copy`, or `auto` (the default: `image` on a
copy-on-write pool, `copy` otherwise). The job log says which pool, driver and path were taken.

Bases are named `pikaci-base-<12 hex>` from the image fingerprint and every setting that shapes
the instance, and carry `user.pikaci.base-image=<fingerprint>` but never a run id, so the
instance reaper leaves them alone. Two lanes that find no base both make one under a temporary
name and rename it; the loser deletes its own. A new base removes the bases of other images and
temporary ones older than an hour (an orchestrator killed while making one)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, List, Mapping, NamedTuple, Optional, Sequence

from pikaci.incus import commands as incus
from pikaci.incus.config import (
    COPY_ON_WRITE_DRIVERS,
    CREATE_AUTO,
    CREATE_COPY,
    CREATE_IMAGE,
    OWNER_CREATED_KEY,
    OWNER_KEY_PREFIX,
    OWNER_RUN_KEY,
    IncusError,
    IncusSettings,
)
from pikaci.incus.hosts import IncusHost, captured, command_failed, quote_argv, run_checked
from pikaci.model import IncusImage
from pikaci.timestamps import now_timestamp, parse_timestamp

BASE_PREFIX = "pikaci-base-"
BASE_IMAGE_KEY = OWNER_KEY_PREFIX + "base-image"
TEMP_INFIX = "-t"
TEMP_BASE_MAX_AGE = timedelta(hours=1)
BASE_CREATED = "base-created"
BASE_PRESENT = "base-present"


@dataclass(frozen=True)
class Creation:
    pool: str
    driver: str
    path: str  # CREATE_IMAGE or CREATE_COPY
    base: Optional[str]  # the base instance copied, on the copy path

    def describe(self) -> str:
        how = (
            f"copy of base instance {self.base}"
            if self.path == CREATE_COPY
            else "incus init from the image"
        )
        return f"storage pool {self.pool} ({self.driver}): instances by {how}"

    def create_argv(
        self, settings: IncusSettings, instance: str, owner: Mapping[str, str]
    ) -> List[str]:
        if self.path == CREATE_COPY and self.base is not None:
            return copy_argv(settings, self.base, instance, owner)
        return incus.init_argv(settings, instance, owner)


# -- shapes ---------------------------------------------------------------------------------


def pool_argv(settings: IncusSettings) -> List[str]:
    return incus.incus_argv(settings, "query", f"/1.0/storage-pools/{settings.storage_pool}")


def parse_pool_driver(json_text: str, pool: str) -> str:
    record = incus.load_json(json_text, f"Incus storage pool `{pool}`")
    driver = record.get("driver") if isinstance(record, dict) else None
    if not isinstance(driver, str) or not driver:
        raise IncusError(f"Incus storage pool `{pool}`: the answer names no driver")
    return driver


def choose_path(settings: IncusSettings, driver: str) -> str:
    if settings.create != CREATE_AUTO:
        return settings.create
    return CREATE_IMAGE if driver in COPY_ON_WRITE_DRIVERS else CREATE_COPY


def base_name(settings: IncusSettings, fingerprint: str) -> str:
    """One base per image and per setting that shapes the instance (a copy keeps them all)."""
    shape = "\0".join(
        [
            fingerprint,
            settings.project,
            settings.instance_type,
            settings.storage_pool,
            *settings.profiles,
            str(settings.cpus),
            str(settings.memory_mib),
        ]
    )
    return BASE_PREFIX + hashlib.sha256(shape.encode()).hexdigest()[:12]


def copy_argv(
    settings: IncusSettings, base: str, instance: str, owner: Mapping[str, str]
) -> List[str]:
    """`incus copy` of the base: same project and pool, no snapshots, the ownership marker as
    `--config`, keys sorted (limits and profiles come with the base)."""
    argv = incus.incus_argv(
        settings,
        "copy",
        "--project",
        settings.project,
        base,
        instance,
        "--storage",
        settings.storage_pool,
        "--instance-only",
    )
    for key in sorted(owner):
        if not key.startswith(OWNER_KEY_PREFIX) or key == BASE_IMAGE_KEY:
            raise IncusError(f"ownership config key {key!r} is not pikaci's")
        argv += ["--config", f"{key}={owner[key]}"]
    return argv


def ensure_base_script(settings: IncusSettings, base: str, fingerprint: str) -> str:
    """Make the base unless it exists: init under a temporary name, rename into place; a lane
    that lost the race deletes its own. Prints BASE_CREATED or BASE_PRESENT last."""
    temp = f"{base}{TEMP_INFIX}{secrets.token_hex(4)}"
    marker = {BASE_IMAGE_KEY: fingerprint, OWNER_CREATED_KEY: now_timestamp()}
    info = quote_argv(incus.info_argv(settings, base))
    delete_temp = quote_argv(incus.delete_argv(settings, temp))
    rename = quote_argv(
        incus.incus_argv(settings, "rename", "--project", settings.project, temp, base)
    )
    return "\n".join(
        [
            "set -u",
            f"if {info} >/dev/null 2>&1; then echo {BASE_PRESENT}; exit 0; fi",
            f"{quote_argv(incus.init_argv(settings, temp, marker))} || exit $?",
            f"if {rename}; then echo {BASE_CREATED}; exit 0; fi",
            f"{delete_temp} >/dev/null 2>&1",
            f"{info} >/dev/null 2>&1 || exit 1",
            f"echo {BASE_PRESENT}",
        ]
    )


class Base(NamedTuple):
    name: str
    fingerprint: str
    created_at: str


def parse_bases(json_text: str) -> List[Base]:
    """Base instances (temporary ones included) of `incus list --format json`: the base marker
    and no run id (a lane's copy inherits the marker, and has a run id)."""
    records = incus.load_json(json_text, "incus list")
    if not isinstance(records, list):
        raise IncusError("incus list: expected a JSON list of instances")
    bases: List[Base] = []
    for record in records:
        if not isinstance(record, dict):
            continue
        name, config = record.get("name"), record.get("config")
        if not isinstance(name, str) or not name.startswith(BASE_PREFIX):
            continue
        if not isinstance(config, dict) or config.get(OWNER_RUN_KEY):
            continue
        fingerprint = config.get(BASE_IMAGE_KEY)
        if not isinstance(fingerprint, str):
            continue
        created = config.get(OWNER_CREATED_KEY)
        bases.append(Base(name, fingerprint, created if isinstance(created, str) else ""))
    return bases


def stale_bases(bases: Sequence[Base], keep: str, fingerprint: str, now: datetime) -> List[str]:
    """Bases of other images, and temporary ones older than TEMP_BASE_MAX_AGE."""
    doomed: List[str] = []
    for item in bases:
        if item.name == keep:
            continue
        if TEMP_INFIX in item.name[len(BASE_PREFIX) :]:
            try:
                young = now - parse_timestamp(item.created_at) < TEMP_BASE_MAX_AGE
            except ValueError:
                young = True  # age unknown: it may be another lane's, under way
            if not young:
                doomed.append(item.name)
        elif item.fingerprint != fingerprint:
            doomed.append(item.name)
    return sorted(doomed)


# -- on a host ------------------------------------------------------------------------------


def plan_creation(
    host: IncusHost,
    settings: IncusSettings,
    image: IncusImage,
    log: Callable[[str], None],
    now: Callable[[], datetime],
) -> Creation:
    """The pool's driver, the path for it, and on the copy path a base that exists."""
    queried = captured(host, "storage pool", pool_argv(settings))
    if queried.exit_code != 0:
        raise command_failed(host, f"incus storage pool {settings.storage_pool}", queried)
    driver = parse_pool_driver(queried.text, settings.storage_pool)
    path = choose_path(settings, driver)
    if path != CREATE_COPY:
        return Creation(settings.storage_pool, driver, path, None)
    base = base_name(settings, image.fingerprint)
    made = host.script("base instance", ensure_base_script(settings, base, image.fingerprint))
    words = made.text.split()
    if made.exit_code != 0 or not words or words[-1] not in (BASE_CREATED, BASE_PRESENT):
        raise command_failed(host, f"preparing base instance {base}", made)
    if words[-1] == BASE_CREATED:
        log(f"made base instance {base} from image {image.fingerprint[:12]}")
        listed = run_checked(host, "incus list", incus.list_instances_argv(settings))
        for name in stale_bases(parse_bases(listed.text), base, image.fingerprint, now()):
            done = host.script(f"delete {name}", quote_argv(incus.delete_argv(settings, name)))
            if done.exit_code == 0:
                log(f"removed base instance {name} (another image, or left half-made)")
    return Creation(settings.storage_pool, driver, path, base)
