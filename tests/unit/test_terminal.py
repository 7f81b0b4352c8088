"""pikaci.terminal: a lane's colours reach the terminal, its other control sequences do not."""

from __future__ import annotations

import pytest

from pikaci.terminal import ControlFilter, strip_controls, strip_controls_text

HOSTILE = (
    b"plain \x1b[31mred\x1b[0m \x1b[1;38;5;208mbold orange\x1b[m"
    b"\x1b]0;owned title\x07"  # window title (OSC, BEL)
    b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"  # hyperlink (OSC, ST)
    b"\x1b[2J\x1b[H"  # clear screen, cursor home
    b"\x1b[5A\x1b[10;20H\x1b[?25l"  # cursor up, move, hide cursor
    b"\x1bc"  # full reset
    b"\x1bP1$r0m\x1b\\"  # DCS reply
    b"\x1b[6n"  # cursor position query (the terminal would answer on stdin)
    b"\x07\x08\x0b\x0c\x7f"
    b"\ttab\r\nnext line\n"
)
EXPECTED = b"plain \x1b[31mred\x1b[0m \x1b[1;38;5;208mbold orange\x1b[mlink\ttab\r\nnext line\n"


def test_colours_pass_and_everything_else_is_dropped() -> None:
    assert strip_controls(HOSTILE) == EXPECTED
    assert strip_controls_text(HOSTILE.decode()) == EXPECTED.decode()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64])
def test_a_stream_cut_anywhere_filters_the_same(size: int) -> None:
    stream = ControlFilter()
    out = b"".join(stream.feed(HOSTILE[i : i + size]) for i in range(0, len(HOSTILE), size))
    assert out + stream.close() == EXPECTED


def test_an_unterminated_sequence_is_dropped_at_the_end() -> None:
    stream = ControlFilter()
    assert stream.feed(b"ok \x1b]0;never ends") == b"ok "
    assert stream.close() == b"]0;never ends"  # the escape goes; its text is harmless


def test_the_console_strips_a_lanes_controls_only_on_a_terminal() -> None:
    import io

    from pikaci.run.console import Console

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    console = Console("human")
    console.stdout = Terminal()
    console.line("[lane] \x1b]0;owned\x07\x1b[2J\x1b[33mwarn\x1b[0m")
    assert console.stdout.getvalue() == "[lane] \x1b[33mwarn\x1b[0m\n"
    console.stdout = io.StringIO()  # a pipe or a file: the line as the lane wrote it
    console.line("[lane] \x1b]0;owned\x07")
    assert console.stdout.getvalue() == "[lane] \x1b]0;owned\x07\n"


def test_eight_bit_controls_are_dropped_in_either_encoding() -> None:
    c1 = "a\u009b2J\u009d0;title\u009cb\u0085c".encode()  # CSI, OSC, ST, NEL as UTF-8
    assert strip_controls(c1) == b"a2J0;titlebc"
    assert strip_controls(b"a\x9b2Jb") == b"a2Jb"  # a raw C1 byte
    assert strip_controls("é ü ß".encode()) == "é ü ß".encode()  # other text passes
    stream = ControlFilter()
    cut = stream.feed(b"x\xc2") + stream.feed(b"\x9b2J") + stream.close()
    assert b"\x9b" not in cut  # a CSI cut between its two bytes is still dropped
