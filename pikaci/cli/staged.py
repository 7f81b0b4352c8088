"""`staged-linux-target-info`: a staged target as CI scripts read it (see pikaci.staged_info)."""

from __future__ import annotations

import argparse
import sys

from pikaci.model import dumps_pretty
from pikaci.staged_info import TargetInfoError, human_lines, target_info
from pikaci.tasks.loader import load_catalog

ERRORS = (TargetInfoError,)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "staged-linux-target-info", help="a staged target's payload installables and names"
    )
    parser.add_argument("target")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    info = target_info(load_catalog(args.file), args.target)
    sys.stdout.write(dumps_pretty(info).decode() if args.json else human_lines(info))
    return 0
