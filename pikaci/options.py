"""Options that exist both as `pikaci` flags and as doit task parameters, declared once.

`Option.add_to(parser)` gives the argparse flag (a bad value is a usage error naming the flag)
and `Option.param()` the doit `params` entry, from the same name, type, default and help.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional


@dataclass(frozen=True)
class Option:
    name: str  # the keyword the action or command receives
    flag: str  # the long flag, without dashes
    kind: type  # doit's parameter type: str, int, float or bool (a switch)
    default: Any
    help: str
    metavar: Optional[str] = None
    expects: str = ""  # what a valid value is, for the usage error
    valid: Optional[Callable[[Any], bool]] = None

    def param(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "long": self.flag,
            "type": self.kind,
            "default": self.default,
            "help": self.help,
        }

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.kind is bool:
            parser.add_argument(
                f"--{self.flag}", dest=self.name, action="store_true", help=self.help
            )
            return
        parser.add_argument(
            f"--{self.flag}",
            dest=self.name,
            type=self.parse,
            default=self.default,
            metavar=self.metavar,
            help=self.help,
        )

    def parse(self, text: str) -> Any:
        """argparse type: a usage error (exit 2) naming the flag instead of a traceback."""
        expected = f"expected {self.expects or self.kind.__name__}, got {text!r}"
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(expected) from None
        if self.valid is not None and not self.valid(value):
            raise argparse.ArgumentTypeError(expected)
        return value


def non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0  # also refuses nan


REMOTE = Option(
    "remote",
    "remote",
    bool,
    False,
    "run incus on the builder ($PIKACI_BUILDER) instead of this machine",
)
JSON = Option("json", "json", bool, False, "the result as one JSON object")
