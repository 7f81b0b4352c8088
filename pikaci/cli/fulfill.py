"""`fulfill-prepared-output-request`: the fulfillment helper's work in-process (§3.5)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pikaci.fulfill.helper import fulfill


class FulfillFailed(Exception):
    """The request could not be fulfilled; the helper's error."""


ERRORS = (FulfillFailed,)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "fulfill-prepared-output-request",
        help="expose a realized output at the paths a prepared-output request names",
    )
    parser.add_argument("request_path")
    parser.set_defaults(func=_fulfill)


def _fulfill(args: argparse.Namespace) -> int:
    request = str(Path(args.request_path).absolute())
    result = fulfill(request)
    if result["status"] != "succeeded":
        raise FulfillFailed(f"{request}: {result['error']}")
    sys.stdout.write(
        f"request={request}\noutput={result['output_name']}\n"
        f"requested_exposures={result['fulfilled_exposures_count']}\n"
    )
    return 0
