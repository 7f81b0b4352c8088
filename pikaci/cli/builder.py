"""`gc-remote`: old runs and unused snapshots on the builder ($PIKACI_BUILDER); `builder reset`:
end the shared SSH connections."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pikaci.builder import check, gc
from pikaci.builder.config import builder_from_environment
from pikaci.builder.connect import close_masters, control_dir
from pikaci.options import JSON
from pikaci.tasks.loader import load_catalog

ERRORS = gc.REMOTE_GC_ERRORS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "gc-remote", help="delete old runs and unused snapshots on the builder ($PIKACI_BUILDER)"
    )
    # the same options as `doit gc_remote`
    gc.KEEP_RUNS.add_to(parser)
    gc.KEEP_SNAPSHOTS_DAYS.add_to(parser)
    JSON.add_to(parser)
    parser.set_defaults(func=gc_remote_command)

    builder = sub.add_parser("builder", help="the builder's shared SSH connections")
    actions = builder.add_subparsers(dest="builder_command", required=True, metavar="ACTION")
    reset = actions.add_parser(
        "reset",
        help="end every shared SSH connection of this user, so that the next command logs in "
        "afresh (new groups on the builder, a changed SSH configuration)",
    )
    reset.set_defaults(func=reset_command)
    checking = actions.add_parser(
        "check",
        help="connect like a run and check everything the catalog's remote lanes need on the "
        "builder; exit 0 only when it is ready",
    )
    JSON.add_to(checking)
    checking.set_defaults(func=check_command)


def gc_remote_command(args: argparse.Namespace) -> int:
    return gc.gc_remote_command(
        builder_from_environment(os.environ),
        args.keep_runs,
        args.keep_snapshots_days,
        args.json,
        sys.stdout,
    )


def reset_command(args: argparse.Namespace) -> int:
    closed = close_masters()
    where = control_dir()
    if closed:
        sys.stdout.write(f"closed {len(closed)} shared connection(s) in {where}\n")
    else:
        sys.stdout.write(f"no shared connection was open in {where}\n")
    return 0


def check_command(args: argparse.Namespace) -> int:
    dodo = Path(args.file)
    catalog = load_catalog(str(dodo)) if dodo.is_file() else None
    builder = builder_from_environment(os.environ)
    report = check.check_command(builder, os.environ, catalog, args.json, sys.stdout)
    return 0 if report.ready else 1
