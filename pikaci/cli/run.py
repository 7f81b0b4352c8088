"""`run`, `rerun` and `doit`: the commands that drive doit over the repository's catalog.

They reach doit only through `pikaci.tasks.loader` (`load_catalog`, `run_doit`): `tasks/` is the
one package that imports it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import List, Sequence

from pikaci.catalog import Catalog
from pikaci.fulfill.settings import fulfill_settings_of_run
from pikaci.model import RUN_FAILED, RUN_SKIPPED
from pikaci.plan import lane_task, target_task
from pikaci.run.console import Console
from pikaci.run.rerun import RerunError, inherited, record_skipped_rerun, rerun_tasks
from pikaci.settings import OUTPUT_MODES, Settings, settings_from_environment
from pikaci.store import StateRoot, load_run_record
from pikaci.tasks.loader import DodoFileError, load_catalog, run_doit


class UsageError(Exception):
    """A command line naming a job or run that cannot be run; the message is one line."""


ERRORS = (UsageError, DodoFileError, RerunError)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run lanes or targets (`lane:<id>`, `target:<id>` or an id)")
    run.add_argument("jobs", nargs="+", metavar="JOB")
    _run_options(run)
    run.set_defaults(func=run_command)
    rerun = sub.add_parser("rerun", help="run a previous run's target again on its snapshot")
    rerun.add_argument("run_id")
    _run_options(rerun)
    rerun.set_defaults(func=rerun_command)


def register_doit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Separate from `register` so that `doit`, the escape hatch, stays last in the listing."""
    doit = sub.add_parser("doit", help="any doit command over the catalog", add_help=False)
    doit.add_argument("doit_args", nargs=argparse.REMAINDER)
    doit.set_defaults(func=doit_command)


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", choices=OUTPUT_MODES, default=None)
    parser.add_argument("-n", "--jobs-in-parallel", dest="parallel", type=int, default=1)
    parser.add_argument(
        "--continue",
        dest="keep_going",
        action="store_true",
        help="do not stop at the first failed lane",
    )


def _settings(args: argparse.Namespace) -> Settings:
    return settings_from_environment(Path.cwd(), args.state_root, getattr(args, "output", None))


def _run_settings(args: argparse.Namespace) -> Settings:
    """`run` and `rerun`: stdout holds the result lines alone, as the reference's CLI."""
    settings = _settings(args)
    settings.results_only_stdout = True
    return settings


def run_command(args: argparse.Namespace) -> int:
    settings = _run_settings(args)
    catalog = load_catalog(args.file)
    return _run(catalog, settings, _task_names(catalog, args.jobs), args)


def doit_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return run_doit(load_catalog(args.file), settings, list(args.doit_args))[0]


def rerun_command(args: argparse.Namespace) -> int:
    settings = _run_settings(args)
    state = StateRoot(settings.state_root)
    old = load_run_record(state, args.run_id)
    if old.status == RUN_SKIPPED:
        console = Console(settings.output, results_only_stdout=True)
        record_skipped_rerun(state, old, str(settings.source_root), console)
        return 0
    catalog = load_catalog(args.file)
    tasks = rerun_tasks(catalog, old)
    if not old.snapshot_dir or not Path(old.snapshot_dir).is_dir():
        raise UsageError(
            f"run `{old.run_id}` cannot be rerun: its snapshot "
            f"{old.snapshot_dir or '(none)'} no longer exists"
        )
    settings.rerun = old
    # the old run's consumer, as recorded (reference §3.4: reused on rerun)
    settings.fulfill = fulfill_settings_of_run(inherited(old), os.environ)
    # a private dep file: a rerun executes everything and leaves doit's state alone
    with tempfile.TemporaryDirectory(prefix="pikaci-rerun-") as scratch:
        settings.dep_file = Path(scratch) / "doit.sqlite3"
        return _run(catalog, settings, tasks, args)


def _task_names(catalog: Catalog, jobs: Sequence[str]) -> List[str]:
    names = []
    for job in jobs:
        kind, _, ident = job.partition(":")
        if (
            ident
            and kind in ("lane", "target")
            and (
                (kind == "lane" and catalog.lane(ident))
                or (kind == "target" and catalog.target(ident))
            )
        ):
            names.append(job)
        elif not ident and catalog.target(job) is not None:
            names.append(target_task(job))
        elif not ident and catalog.lane(job) is not None:
            names.append(lane_task(job))
        else:
            raise UsageError(f"unknown job `{job}`")
    return names


def _run(catalog: Catalog, settings: Settings, tasks: List[str], args: argparse.Namespace) -> int:
    doit_args = ["run"]
    if args.parallel > 1:
        doit_args += ["-n", str(args.parallel), "-P", "thread"]
    if args.keep_going:
        doit_args.append("--continue")
    code, final = run_doit(catalog, settings, doit_args + tasks)
    if final is None or code not in (0, 1):
        return 1 if code else 0  # doit itself failed (bad catalog, task error): an error
    return 1 if final.status == RUN_FAILED else 0
