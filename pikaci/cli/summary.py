"""`summary`: a run as a CI step reports it (see `pikaci.run_summary`)."""

from __future__ import annotations

import argparse
import os
import sys

from pikaci.cli.inspect import state_root
from pikaci.run_summary import OPTIONS, SummaryError, summary_command

ERRORS = (SummaryError,)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "summary",
        help="a run as Markdown (stdout or $GITHUB_STEP_SUMMARY), key=value outputs "
        "($GITHUB_OUTPUT), an artifact directory, failed jobs' host logs",
    )
    parser.add_argument("run_id", nargs="?", default="", help="default: the newest run")
    for option in OPTIONS:
        option.add_to(parser)
    parser.set_defaults(func=_summary)


def _summary(args: argparse.Namespace) -> int:
    return summary_command(
        state_root(args),
        args.run_id,
        args.target,
        args.artifact_dir,
        args.github_output,
        args.step_summary,
        args.allow_missing,
        os.environ,
        sys.stdout,
        sys.stderr,
    )
