"""Housekeeping tasks: `gc_remote`, `builder_check`, `incus_image`, `incus_reap`, `serve`,
`summary` and `pin_sources`.

They are in every repository's task list, belong to no target and run only when named: plain
`doit` must never delete anything or start a server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from doit.exceptions import TaskError

from pikaci.builder import check as builder_check
from pikaci.builder import gc
from pikaci.builder.transport import RemoteCommandError, TransportError
from pikaci.catalog import Catalog
from pikaci.incus import admin as incus_admin
from pikaci.incus import config as incus_config
from pikaci.model import RecordError
from pikaci.options import JSON, REMOTE
from pikaci.pins import PINS_PATH, PinError, pins_up_to_date, update_pins
from pikaci.run_summary import OPTIONS as SUMMARY_OPTIONS
from pikaci.run_summary import RUN, SummaryError, summary_command
from pikaci.server import serve
from pikaci.settings import Settings
from pikaci.store import StateRoot, StoreError
from pikaci.tasks.common import TaskDict

GC_REMOTE_TASK = "gc_remote"
INCUS_IMAGE_TASK = "incus_image"
INCUS_REAP_TASK = "incus_reap"
SERVE_TASK = "serve"
SUMMARY_TASK = "summary"
PIN_SOURCES_TASK = "pin_sources"
BUILDER_CHECK_TASK = "builder_check"
MAINTENANCE_TASKS = (
    GC_REMOTE_TASK,
    BUILDER_CHECK_TASK,
    INCUS_IMAGE_TASK,
    INCUS_REAP_TASK,
    SERVE_TASK,
    SUMMARY_TASK,
    PIN_SOURCES_TASK,
)
_INCUS_ERRORS = (
    incus_admin.IncusAdminError,
    incus_config.IncusError,
    TransportError,
    RemoteCommandError,
)


def maintenance_tasks(settings: Settings, catalog: Catalog) -> List[TaskDict]:
    return [
        gc_remote_task(settings),
        builder_check_task(settings, catalog),
        incus_image_task(),
        incus_reap_task(),
        serve_task(settings.source_root, StateRoot(settings.state_root)),
        summary_task(StateRoot(settings.state_root)),
        pin_sources_task(settings.source_root / PINS_PATH),
    ]


def gc_remote_task(settings: Settings) -> TaskDict:
    def action(keep_runs: int, keep_snapshots_days: float) -> Any:
        if settings.builder is None:
            return TaskError("gc_remote: no builder is configured (set PIKACI_BUILDER)")
        try:
            gc.gc_remote_command(
                settings.builder, keep_runs, keep_snapshots_days, False, sys.stdout
            )
        except (ValueError, *gc.REMOTE_GC_ERRORS) as exc:
            return TaskError(str(exc))
        return None

    return {
        "basename": GC_REMOTE_TASK,
        "doc": "remove old runs and unused snapshots from the builder ($PIKACI_BUILDER); "
        "--keep-runs N, --keep-snapshots-days D",
        "params": [gc.KEEP_RUNS.param(), gc.KEEP_SNAPSHOTS_DAYS.param()],
        "actions": [action],
        "uptodate": [False],
        "verbosity": 2,  # the report is the point of running it
    }


def builder_check_task(settings: Settings, catalog: Catalog) -> TaskDict:
    def action(json: bool) -> Any:
        if settings.builder is None:
            return TaskError("builder_check: no builder is configured (set PIKACI_BUILDER)")
        report = builder_check.check_command(
            settings.builder, os.environ, catalog, json, sys.stdout
        )
        return None if report.ready else TaskError(f"builder {report.host} is not ready")

    return {
        "basename": BUILDER_CHECK_TASK,
        "doc": "check that the builder ($PIKACI_BUILDER) has what this catalog's remote lanes "
        "need: ssh, tools, work dir, python3, bwrap, nix, Incus; --json",
        "params": [JSON.param()],
        "actions": [action],
        "uptodate": [False],
        "verbosity": 2,
    }


def incus_image_task() -> TaskDict:
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
            REMOTE.param(),
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
    except (*_INCUS_ERRORS, ValueError, OSError):
        return False  # the action meets the same problem and reports it
    return current == incus_admin.image_fingerprint(files)


def _import_image(image: List[str], remote: bool) -> Any:
    try:
        files = incus_admin.image_files(image)
        config = incus_admin.settings(remote)
        host = incus_admin.open_host(remote, lambda line: None)
        done = incus_admin.import_image(host, config, files)
    except (*_INCUS_ERRORS, ValueError, OSError) as exc:
        return TaskError(f"{INCUS_IMAGE_TASK}: {exc}")
    verb = "imported" if done.imported else "already current:"
    print(f"{verb} {done.alias} in project {done.project} -> {done.fingerprint} on {host.name}")
    return None


def incus_reap_task() -> TaskDict:
    return {
        "basename": INCUS_REAP_TASK,
        "doc": "delete Incus instances pikaci created that are older than --older-than "
        "seconds (unmarked instances are never touched), --remote",
        "params": [incus_admin.OLDER_THAN.param(), REMOTE.param()],
        "actions": [_reap],
        "uptodate": [False],
        "verbosity": 2,
    }


def _reap(older_than: float, remote: bool) -> Any:
    try:
        host = incus_admin.open_host(remote, lambda line: None)
        report = incus_admin.reap_instances(host, incus_admin.settings(remote), older_than, print)
    except (*_INCUS_ERRORS, ValueError) as exc:
        return TaskError(f"{INCUS_REAP_TASK}: {exc}")
    print(incus_admin.reap_summary(host, report))
    return None


def serve_task(source_root: Path, state: StateRoot) -> TaskDict:
    """`doit serve [--host H] [--port P] [--no-auth]`: this checkout's runs, until Ctrl-C."""

    def action(host: str, port: int, no_auth: bool) -> Optional[TaskError]:
        try:
            repos, tokens = serve.resolve_config(host, no_auth, [], source_root, state, os.environ)
        except serve.ServeError as exc:
            return TaskError(f"serve: {exc}")
        serve.serve(repos, tokens, host, port, sys.stderr)
        return None

    return {
        "basename": SERVE_TASK,
        "doc": "serve this checkout's runs (web pages and JSON API) until Ctrl-C; "
        "--host, --port, --no-auth",
        "params": [serve.HOST.param(), serve.PORT.param(), serve.NO_AUTH.param()],
        "actions": [action],
        "uptodate": [False],
        "verbosity": 2,
    }


def summary_task(state: StateRoot) -> TaskDict:
    """`doit summary [--run ID] [--target T] [--artifact-dir D] ...`: `pikaci summary`."""

    def action(
        run_id: str,
        target: str,
        artifact_dir: str,
        github_output: str,
        step_summary: str,
        allow_missing: bool,
    ) -> Optional[TaskError]:
        try:
            code = summary_command(
                state,
                run_id,
                target,
                artifact_dir,
                github_output,
                step_summary,
                allow_missing,
                os.environ,
                sys.stdout,
                sys.stderr,
            )
        except (SummaryError, StoreError, RecordError, OSError) as exc:
            return TaskError(f"{SUMMARY_TASK}: {exc}")
        return TaskError(f"{SUMMARY_TASK}: the run record cannot be read") if code else None

    return {
        "basename": SUMMARY_TASK,
        "doc": "a run as a CI step reports it: Markdown, $GITHUB_OUTPUT lines, --artifact-dir, "
        "failed jobs' host logs; --run, --target, --allow-missing",
        "params": [RUN.param(), *(option.param() for option in SUMMARY_OPTIONS)],
        "actions": [action],
        "uptodate": [False],
        "verbosity": 2,
    }


def pin_sources_task(pins_file: Path) -> TaskDict:
    """`doit pin_sources`: `pikaci pin update` for every pin; up to date while no pinned ref
    has moved (which asks each remote)."""

    def action() -> Optional[TaskError]:
        if not pins_file.is_file():
            print(f"{PIN_SOURCES_TASK}: no {PINS_PATH}; add a source: pikaci pin add NAME URL")
            return None
        try:
            update_pins(pins_file, (), print)
        except PinError as exc:
            return TaskError(f"{PIN_SOURCES_TASK}: {exc}")
        return None

    return {
        "basename": PIN_SOURCES_TASK,
        "doc": f"re-pin the git sources of {PINS_PATH} whose ref moved (nix-prefetch-git's "
        "hash); up to date while none did",
        "actions": [action],
        "uptodate": [lambda: pins_file.is_file() and pins_up_to_date(pins_file)],
        "verbosity": 2,
    }
