"""`gc-remote`: old runs and unused snapshots on the builder ($PIKACI_BUILDER); `builder reset`:
end the shared SSH connections."""

from __future__ import annotations

import argparse
import os
import sys

from pikaci.builder import gc
from pikaci.builder.config import builder_from_environment
from pikaci.builder.connect import close_masters, control_dir
from pikaci.options import JSON

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
