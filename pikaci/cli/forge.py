"""`ci-plan`: which lanes of ci/forge-lanes.toml the changes select, and why."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pikaci.forge.changes import ChangeSetError
from pikaci.forge.manifest import BRANCH, NIGHTLY, ForgeManifestError
from pikaci.forge.selection import BASE, NIGHTLY_SWITCH, WORKTREE, compute_plan
from pikaci.options import JSON

ERRORS = (ForgeManifestError, ChangeSetError)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = sub.add_parser(
        "ci-plan", help="which lanes of ci/forge-lanes.toml the changes select, and why"
    )
    # the options of `doit ci:plan`, declared once
    BASE.add_to(plan)
    WORKTREE.add_to(plan)
    NIGHTLY_SWITCH.add_to(plan)
    JSON.add_to(plan)
    plan.set_defaults(func=plan_command)


def plan_command(args: argparse.Namespace) -> int:
    kind = NIGHTLY if args.nightly else BRANCH
    plan = compute_plan(Path.cwd(), kind, args.base, args.worktree)
    sys.stdout.write(plan.render(args.json))
    return 0
