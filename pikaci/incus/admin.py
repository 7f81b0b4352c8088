"""Incus housekeeping shared by the CLI and the doit tasks: importing the guest image under its
alias when it changed, and reaping instances that runs left behind.

Both run wherever the Incus lanes run: on this machine, or on the builder over the shared SSH
connection (`--remote`, the builder from the environment).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from pikaci.builder.config import builder_from_environment
from pikaci.builder.connect import connect
from pikaci.incus import commands as incus
from pikaci.incus import config as incus_config
from pikaci.incus.hosts import (
    BuilderHost,
    IncusHost,
    IncusRuntimeError,
    LocalHost,
    ReapReport,
    reap,
    run_checked,
)
from pikaci.options import Option, non_negative

Log = Callable[[str], None]

OLDER_THAN = Option(
    "older_than",
    "older-than",
    float,
    float(incus_config.REAP_AFTER_SECS),
    "minimum age in seconds of a marked instance to delete (default 6 hours)",
    metavar="SECS",
    expects="zero or a positive number of seconds",
    valid=non_negative,
)


# one error type for the runtime and the housekeeping (both drive the same incus commands)
IncusAdminError = IncusRuntimeError


def open_host(remote: bool, log: Log) -> IncusHost:
    if not remote:
        return LocalHost(log)
    return BuilderHost(connect(builder_from_environment(os.environ), log))


def settings(remote: bool) -> incus_config.IncusSettings:
    return incus_config.incus_settings_from_environment(os.environ, sudo_default=remote)


# -- image ------------------------------------------------------------------------------------


def image_fingerprint(files: Sequence[Path]) -> str:
    """Incus's fingerprint of an image: SHA-256 over the unified tarball, or over the metadata
    tarball followed by the rootfs (split images, as the NixOS image is built)."""
    # `doit incus_image` asks twice (up-to-date check, then import): hash gigabytes once
    keys = []
    for path in files:
        info = Path(path).stat()
        keys.append((str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return _sha256_of(tuple(keys))


@functools.lru_cache(maxsize=8)
def _sha256_of(files: Tuple[Tuple[str, int, int, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, *_ in files:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def alias_fingerprint(host: IncusHost, config: incus_config.IncusSettings) -> Optional[str]:
    """The fingerprint the alias points at, or None when no image has it."""
    listed = run_checked(host, "incus image list", incus.image_list_argv(config))
    try:
        return incus.parse_image_identity(listed.text, config).fingerprint
    except incus_config.IncusError as exc:
        if "no image" in str(exc):
            return None
        raise IncusAdminError(str(exc)) from None


@dataclass
class ImageImport:
    alias: str
    project: str
    fingerprint: str
    imported: bool  # False: the alias already named this image


def image_files(paths: Sequence[str]) -> List[Path]:
    if len(paths) not in (1, 2):
        raise IncusAdminError(
            "give the image as one unified tarball, or as metadata and rootfs (two files)"
        )
    files = [Path(p) for p in paths]
    for path in files:
        if not path.is_file():
            raise IncusAdminError(f"image file {path} does not exist")
    return files


def import_image(
    host: IncusHost, config: incus_config.IncusSettings, files: Sequence[Path]
) -> ImageImport:
    """Import `files` under the alias unless the alias already names exactly this image."""
    wanted = image_fingerprint(files)
    current = alias_fingerprint(host, config)
    if current == wanted:
        return ImageImport(config.image_alias, config.project, wanted, imported=False)
    known = host.script("incus image show", shlex.join(_image_argv(config, "show", wanted)))
    if known.exit_code == 0:
        # the image is there under another name: point the alias at it
        if current is not None:
            run_checked(
                host,
                "incus image alias delete",
                _image_argv(config, "alias", "delete", config.image_alias),
            )
        run_checked(
            host,
            "incus image alias create",
            _image_argv(config, "alias", "create", config.image_alias, wanted),
        )
        return ImageImport(config.image_alias, config.project, wanted, imported=True)
    argv = incus.incus_argv(
        config,
        "image",
        "import",
        "--project",
        config.project,
        *[str(path) for path in files],
        "--alias",
        config.image_alias,
        "--reuse",
    )
    run_checked(host, "incus image import", argv, timeout_secs=1800)
    now = alias_fingerprint(host, config)
    if now != wanted:
        raise IncusAdminError(
            f"after the import, alias {config.image_alias} names {now}, not {wanted}"
        )
    return ImageImport(config.image_alias, config.project, wanted, imported=True)


def _image_argv(config: incus_config.IncusSettings, *args: str) -> List[str]:
    return incus.incus_argv(config, "--project", config.project, "image", *args)


# -- reaping ----------------------------------------------------------------------------------


def reap_instances(
    host: IncusHost, config: incus_config.IncusSettings, older_than_secs: float, log: Log
) -> ReapReport:
    """Delete instances carrying pikaci's ownership marker that are older than the bound.
    Instances without the marker are never touched."""
    if older_than_secs < 0:
        raise IncusAdminError("--older-than must be zero or positive")
    report = reap(host, config, older_than_secs, log)
    if report.failed:
        raise IncusAdminError(f"could not delete {', '.join(report.failed)} on {host.name}")
    return report


def reap_summary(host: IncusHost, report: ReapReport) -> str:
    return (
        f"incus reap on {host.name}: removed {len(report.removed)} instance(s), "
        f"kept {len(report.kept)} younger one(s)"
    )
