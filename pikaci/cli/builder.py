"""`gc-remote`: old runs and unused snapshots on the builder ($PIKACI_BUILDER)."""

from __future__ import annotations

import argparse
import os
import sys

from pikaci.builder import gc
from pikaci.builder.config import builder_from_environment
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


def gc_remote_command(args: argparse.Namespace) -> int:
    return gc.gc_remote_command(
        builder_from_environment(os.environ),
        args.keep_runs,
        args.keep_snapshots_days,
        args.json,
        sys.stdout,
    )
