"""Host-process lanes run under `guest/reaper.py`, so nothing they start outlives them: here on
this machine, by path; on a builder, as source on the command line."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Sequence

from pikaci.guest import reaper

REAPER = Path(reaper.__file__)


def reaped(argv: Sequence[str]) -> List[str]:
    """`argv` run by this interpreter's reaper (-I -S: no environment or site packages of the
    lane's can change the reaper; the command still gets the whole environment)."""
    return [sys.executable, "-I", "-S", str(REAPER), *argv]


@functools.lru_cache(maxsize=1)
def reaper_source() -> str:
    return REAPER.read_text(encoding="utf-8")
