"""doit tasks for Incus housekeeping: `incus_image` and `incus_reap`.

Like `gc_remote` they are in every repository's task list, belong to no target and run only
when named (never by plain `doit`).
"""

from __future__ import annotations

from typing import Any, Dict, List

from doit.exceptions import TaskError

from pikaci import incus, incus_admin
from pikaci.transport import RemoteCommandError, TransportError

INCUS_IMAGE_TASK = "incus_image"
INCUS_REAP_TASK = "incus_reap"
_ERRORS = (incus_admin.IncusAdminError, incus.IncusError, TransportError, RemoteCommandError)

_REMOTE_PARAM = {
    "name": "remote",
    "long": "remote",
    "type": bool,
    "default": False,
    "help": "run incus on the builder ($PIKACI_BUILDER) instead of this machine",
}


def incus_image_task() -> Dict[str, Any]:
    return {
        "basename": INCUS_IMAGE_TASK,
        "doc": "import the guest image under $PIKACI_INCUS_IMAGE_ALIAS when it changed: "
        "--image FILE (unified tarball, or --image METADATA --image ROOTFS), --remote",
        "params": [
            {
                "name": "image",
                "long": "image",
                "type": list,
                "default": [],
                "help": "the image: one unified tarball, or metadata then rootfs",
            },
            _REMOTE_PARAM,
        ],
        "actions": [_import_image],
        "uptodate": [_image_current],
        "verbosity": 2,
    }


def _image_current(task: Any, values: Dict[str, Any]) -> bool:
    """Up to date when the alias already names exactly the given image (checked each time:
    someone else may have moved the alias)."""
    options = task.options or {}
    try:
        files = incus_admin.image_files(options.get("image") or [])
        remote = bool(options.get("remote"))
        host = incus_admin.open_host(remote, lambda line: None)
        current = incus_admin.alias_fingerprint(host, incus_admin.settings(remote))
    except (*_ERRORS, ValueError, OSError):
        return False  # the action meets the same problem and reports it
    return current == incus_admin.image_fingerprint(files)


def _import_image(image: List[str], remote: bool) -> Any:
    try:
        files = incus_admin.image_files(image)
        config = incus_admin.settings(remote)
        host = incus_admin.open_host(remote, lambda line: None)
        done = incus_admin.import_image(host, config, files)
    except (*_ERRORS, ValueError, OSError) as exc:
        return TaskError(f"{INCUS_IMAGE_TASK}: {exc}")
    verb = "imported" if done.imported else "already current:"
    print(f"{verb} {done.alias} in project {done.project} -> {done.fingerprint} on {host.name}")
    return None


def incus_reap_task() -> Dict[str, Any]:
    return {
        "basename": INCUS_REAP_TASK,
        "doc": "delete Incus instances pikaci created that are older than --older-than "
        "seconds (unmarked instances are never touched), --remote",
        "params": [
            {
                "name": "older_than",
                "long": "older-than",
                "type": float,
                "default": float(incus.REAP_AFTER_SECS),
                "help": "minimum age in seconds of an instance to delete",
            },
            _REMOTE_PARAM,
        ],
        "actions": [_reap],
        "uptodate": [False],
        "verbosity": 2,
    }


def _reap(older_than: float, remote: bool) -> Any:
    try:
        host = incus_admin.open_host(remote, lambda line: None)
        report = incus_admin.reap_instances(host, incus_admin.settings(remote), older_than, print)
    except (*_ERRORS, ValueError) as exc:
        return TaskError(f"{INCUS_REAP_TASK}: {exc}")
    print(
        f"incus reap on {host.name}: removed {len(report.removed)} instance(s), "
        f"kept {len(report.kept)} younger one(s)"
    )
    return None
