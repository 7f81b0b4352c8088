"""Lane output shown on a terminal: colours pass, every other control sequence is dropped.

A lane's output is untrusted: written to a terminal as it is, it could set the window title,
clear the screen, move the cursor over earlier lines or answer-back queries. SGR sequences
(`ESC [ ... m`: colours and weights) are kept; other escape sequences (CSI, OSC, DCS, ...) and C0
control characters but tab, newline and carriage return are removed. `ControlFilter` works on a
stream whose chunks may cut a sequence in two.
"""

from __future__ import annotations

import re
from typing import Match

_SGR = re.compile(rb"\x1b\[[0-9;:]*m")
# a complete escape sequence starting at ESC, or a lone ESC; stray C0 controls and DEL
_CONTROL = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\"
    rb"|[ -/]*[0-OQ-WYZ\\`-~])?|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]",
    re.S,
)
_COMPLETE = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\"
    rb"|[ -/]*[0-OQ-WYZ\\`-~])",  # not the introducers [ ] P X ^ _
    re.S,
)
_LONGEST_PENDING = 4096  # past this an unterminated sequence is dropped, not buffered


def _keep_colours(match: Match[bytes]) -> bytes:
    sequence = match.group(0)
    return sequence if _SGR.fullmatch(sequence) else b""


# C1 controls (U+0080-U+009F, or those bytes alone where they are no UTF-8): CSI, OSC and DCS
# in their 8-bit form; dropped whole, what follows them prints as plain text
_C1 = re.compile("[\x80-\x9f\udc80-\udc9f]")


def strip_controls(data: bytes) -> bytes:
    kept = _CONTROL.sub(_keep_colours, data).decode("utf-8", "surrogateescape")
    return _C1.sub("", kept).encode("utf-8", "surrogateescape")


def strip_controls_text(text: str) -> str:
    return strip_controls(text.encode("utf-8", "surrogateescape")).decode(
        "utf-8", "surrogateescape"
    )


class ControlFilter:
    """`strip_controls` over a stream: a sequence cut by a chunk's end waits for the next."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        self._pending = b""
        position = 0
        while True:
            escape = data.find(b"\x1b", position)
            if escape == -1:
                break
            complete = _COMPLETE.match(data, escape)
            if complete is not None:
                position = complete.end()
            elif len(data) - escape < _LONGEST_PENDING:
                data, self._pending = data[:escape], data[escape:]  # the rest may complete it
                break
            else:
                position = escape + 1
        return strip_controls(data)

    def close(self) -> bytes:
        rest, self._pending = self._pending, b""
        return strip_controls(rest)
