"""`pin`: pinned git sources for Nix expressions built without flakes (see `pikaci.pins`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pikaci.pins import DEFAULT_REF, PINS_PATH, PinError, add_pin, check_pins, update_pins

ERRORS = (PinError,)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pin = sub.add_parser("pin", help=f"pinned git sources ({PINS_PATH}): add, update, check")
    pin.add_argument("--file", dest="pins_file", default=str(PINS_PATH), help="the pins file")
    actions = pin.add_subparsers(dest="pin_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="pin a git source at the revision its ref names now")
    add.add_argument("name")
    add.add_argument("url")
    add.add_argument("--ref", default=DEFAULT_REF, help="branch, tag or revision to follow")
    add.set_defaults(func=_add)
    update = actions.add_parser("update", help="re-pin the sources whose ref moved")
    update.add_argument("names", nargs="*", metavar="NAME")
    update.set_defaults(func=_update)
    check = actions.add_parser("check", help="exit 1 when a pinned ref has moved")
    check.add_argument("names", nargs="*", metavar="NAME")
    check.set_defaults(func=_check)


def _say(line: str) -> None:
    print(line, flush=True)


def _add(args: argparse.Namespace) -> int:
    add_pin(Path(args.pins_file), args.name, args.url, args.ref, _say)
    return 0


def _update(args: argparse.Namespace) -> int:
    update_pins(Path(args.pins_file), args.names, _say)
    return 0


def _check(args: argparse.Namespace) -> int:
    statuses = check_pins(Path(args.pins_file), args.names)
    for status in statuses:
        sys.stdout.write(status.line() + "\n")
    return 1 if any(status.moved for status in statuses) else 0
