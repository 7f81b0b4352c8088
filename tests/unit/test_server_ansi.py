"""ANSI log text -> HTML fragments (pikaci/server/ansi.py) and its stylesheet."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import List, Optional, Tuple

import pytest

from pikaci.server.ansi import MAX_PENDING, AnsiRenderer, ansi_to_html
from tests.fixtures.support import REPO_ROOT

CSS = REPO_ROOT / "pikaci" / "server" / "static" / "ansi.css"

ESC = "\x1b"


def span(text: str, classes: str = "", style: str = "") -> str:
    attrs = (f' class="{classes}"' if classes else "") + (f' style="{style}"' if style else "")
    return f"<span{attrs}>{text}</span>"


class _Fragment(HTMLParser):
    """Parses one fragment: checks it is balanced, records each character with its style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: List[Tuple[Tuple[str, Optional[str]], ...]] = []
        self.opened = 0
        self.closed = 0
        self.tags: List[str] = []
        self.chars: List[Tuple[str, Tuple[Tuple[str, Optional[str]], ...]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.opened += 1
        self.stack.append(tuple(sorted(attrs)))

    def handle_endtag(self, tag):
        self.tags.append(tag)
        self.closed += 1
        assert self.stack, "a closing tag without an opening one"
        self.stack.pop()

    def handle_data(self, data):
        style = tuple(a for attrs in self.stack for a in attrs)
        self.chars.extend((c, style) for c in data)


def parse(fragment: str) -> _Fragment:
    parser = _Fragment()
    parser.feed(fragment)
    parser.close()
    return parser


def assert_balanced(fragment: str) -> _Fragment:
    parsed = parse(fragment)
    assert parsed.opened == parsed.closed, fragment
    assert not parsed.stack, fragment
    assert set(parsed.tags) <= {"span"}, fragment
    return parsed


def styled_chars(fragments: List[str]) -> List[Tuple[str, Tuple[Tuple[str, Optional[str]], ...]]]:
    chars: List[Tuple[str, Tuple[Tuple[str, Optional[str]], ...]]] = []
    for fragment in fragments:
        chars.extend(assert_balanced(fragment).chars)
    return chars


# -- text


def test_plain_text_is_escaped_and_not_wrapped():
    log = "<script>alert('x & \"y\"')</script>\n\ttab\n"
    assert ansi_to_html(log) == (
        "&lt;script&gt;alert(&#x27;x &amp; &quot;y&quot;&#x27;)&lt;/script&gt;\n\ttab\n"
    )
    assert ansi_to_html("") == ""


def test_styled_text_is_escaped_too():
    assert ansi_to_html(f"{ESC}[31m<b>&{ESC}[0m") == span("&lt;b&gt;&amp;", "ansi-fg-1")


def test_non_ascii_text_survives():
    assert ansi_to_html(f"{ESC}[32m✓ passé{ESC}[0m 日本") == span("✓ passé", "ansi-fg-2") + " 日本"


# -- SGR


@pytest.mark.parametrize(
    ("params", "classes"),
    [
        ("1", "ansi-bold"),
        ("2", "ansi-dim"),
        ("3", "ansi-italic"),
        ("4", "ansi-underline"),
        ("7", "ansi-inverse"),
        ("30", "ansi-fg-0"),
        ("31", "ansi-fg-1"),
        ("37", "ansi-fg-7"),
        ("90", "ansi-fg-8"),
        ("97", "ansi-fg-15"),
        ("40", "ansi-bg-0"),
        ("42", "ansi-bg-2"),
        ("47", "ansi-bg-7"),
        ("100", "ansi-bg-8"),
        ("107", "ansi-bg-15"),
    ],
)
def test_each_sgr_code(params, classes):
    assert ansi_to_html(f"{ESC}[{params}mX") == span("X", classes)


@pytest.mark.parametrize(
    ("on", "off", "first", "then"),
    [
        ("1;2;3", "22", span("A", "ansi-bold ansi-dim ansi-italic"), span("B", "ansi-italic")),
        ("3;4", "23", span("A", "ansi-italic ansi-underline"), span("B", "ansi-underline")),
        ("4;1", "24", span("A", "ansi-bold ansi-underline"), span("B", "ansi-bold")),
        ("7;1", "27", span("A", "ansi-bold ansi-inverse"), span("B", "ansi-bold")),
        ("31;42", "39", span("A", "ansi-fg-1 ansi-bg-2"), span("B", "ansi-bg-2")),
        ("31;42", "49", span("A", "ansi-fg-1 ansi-bg-2"), span("B", "ansi-fg-1")),
        ("38;5;196;1", "39", span("A", "ansi-bold", "color:#ff0000"), span("B", "ansi-bold")),
        (
            "48;2;1;2;3;1",
            "49",
            span("A", "ansi-bold", "background-color:#010203"),
            span("B", "ansi-bold"),
        ),
    ],
)
def test_sgr_off_codes_turn_off_only_their_attribute(on, off, first, then):
    assert ansi_to_html(f"{ESC}[{on}mA{ESC}[{off}mB") == first + then


def test_several_params_apply_in_order():
    assert ansi_to_html(f"{ESC}[1;31;44mX") == span("X", "ansi-bold ansi-fg-1 ansi-bg-4")
    assert ansi_to_html(f"{ESC}[31;32mX") == span("X", "ansi-fg-2")
    assert ansi_to_html(f"{ESC}[1;31;0;4mX") == span("X", "ansi-underline")
    assert ansi_to_html(f"{ESC}[1;0mX") == "X"


@pytest.mark.parametrize("reset", ["0", "", "00", "1;0", ";"])
def test_reset(reset):
    assert ansi_to_html(f"{ESC}[1;3;4;7;31;42mA{ESC}[{reset}mB") == (
        span("A", "ansi-bold ansi-italic ansi-underline ansi-inverse ansi-fg-2 ansi-bg-1") + "B"
    )


def test_inverse_swaps_colours():
    assert ansi_to_html(f"{ESC}[7;31mX") == span("X", "ansi-inverse ansi-bg-1")
    assert ansi_to_html(f"{ESC}[7;31;42mX") == span("X", "ansi-inverse ansi-fg-2 ansi-bg-1")
    assert ansi_to_html(f"{ESC}[7;38;5;196mX") == span(
        "X", "ansi-inverse", "background-color:#ff0000"
    )
    assert ansi_to_html(f"{ESC}[7;31mA{ESC}[27mB") == (
        span("A", "ansi-inverse ansi-bg-1") + span("B", "ansi-fg-1")
    )


@pytest.mark.parametrize(
    ("n", "rgb"),
    [
        (16, "#000000"),
        (21, "#0000ff"),
        (46, "#00ff00"),
        (196, "#ff0000"),
        (67, "#5f87af"),
        (231, "#ffffff"),
        (232, "#080808"),
        (244, "#808080"),
        (255, "#eeeeee"),
    ],
)
def test_256_colours_as_inline_style(n, rgb):
    assert ansi_to_html(f"{ESC}[38;5;{n}mX") == span("X", style=f"color:{rgb}")
    assert ansi_to_html(f"{ESC}[48;5;{n}mX") == span("X", style=f"background-color:{rgb}")


def test_256_colours_below_16_use_the_classes():
    assert ansi_to_html(f"{ESC}[38;5;1mX") == span("X", "ansi-fg-1")
    assert ansi_to_html(f"{ESC}[38;5;15mX") == span("X", "ansi-fg-15")
    assert ansi_to_html(f"{ESC}[48;5;0mX") == span("X", "ansi-bg-0")
    assert ansi_to_html(f"{ESC}[48;5;9mX") == span("X", "ansi-bg-9")


def test_truecolour_and_both_inline():
    assert ansi_to_html(f"{ESC}[38;2;255;128;0mX") == span("X", style="color:#ff8000")
    assert ansi_to_html(f"{ESC}[1;38;2;1;2;3;48;2;10;20;30mX") == span(
        "X", "ansi-bold", "color:#010203;background-color:#0a141e"
    )


def test_colon_forms():
    assert ansi_to_html(f"{ESC}[38:5:196mX") == span("X", style="color:#ff0000")
    assert ansi_to_html(f"{ESC}[38:2::255:0:0mX") == span("X", style="color:#ff0000")
    assert ansi_to_html(f"{ESC}[48:2:0:0:255mX") == span("X", style="background-color:#0000ff")
    assert ansi_to_html(f"{ESC}[4:3mA{ESC}[4:0mB") == span("A", "ansi-underline") + "B"


@pytest.mark.parametrize(
    "params",
    [
        "38;5;256",
        "38;5;99999999999999999999999",
        "38;5",
        "38",
        "48;2;1;2",
        "48;2;256;0;0",
        "38:5",
        "38:2:1",
        "38:2:<:=:>",
        "99",
        "99999999999999999999999",
        "9" * 5000,  # int() would refuse this many digits
        "<5",
        ">4;1",  # xterm's modifyOtherKeys, private: not SGR at all
        "?1",
        "58;5;1",  # underline colour: its values must not be read as codes (1 = bold)
        "58;2;1;1;1",
    ],
)
def test_malformed_or_unsupported_params_are_ignored(params):
    assert ansi_to_html(f"{ESC}[{params}mX") == "X"


def test_malformed_param_does_not_spoil_the_others():
    assert ansi_to_html(f"{ESC}[1;<5;31mX") == span("X", "ansi-bold ansi-fg-1")
    # the three fields of a bad 256-colour are consumed, what follows still applies
    assert ansi_to_html(f"{ESC}[38;5;300;4mX") == span("X", "ansi-underline")
    assert ansi_to_html(f"{ESC}[31m{ESC}[38;2;1;2;999mX") == span("X", "ansi-fg-1")


def test_one_span_per_run_of_identical_style():
    assert ansi_to_html(f"{ESC}[31mA{ESC}[31mB{ESC}[1m{ESC}[22mC") == span("ABC", "ansi-fg-1")
    assert ansi_to_html(f"{ESC}[31mA\nB{ESC}[0m\nC") == span("A\nB", "ansi-fg-1") + "\nC"
    assert ansi_to_html(f"A{ESC}[0mB{ESC}[39;49mC") == "ABC"


# -- other sequences and controls


def test_other_csi_sequences_are_removed():
    log = f"a{ESC}[Kb{ESC}[2Jc{ESC}[?25ld{ESC}[1;1He{ESC}[3 qf{ESC}[>0cg{ESC}[10Ah"
    assert ansi_to_html(log) == "abcdefgh"
    # a CSI with an intermediate byte is not SGR even if it ends in m
    assert ansi_to_html(f"{ESC}[1 mX") == "X"


def test_osc_is_removed_and_osc8_link_text_kept():
    assert ansi_to_html(f"{ESC}]0;window title{chr(7)}text") == "text"
    link = f"{ESC}]8;;https://example.com/?a=1&b=2{ESC}\\link text{ESC}]8;;{ESC}\\ after"
    assert ansi_to_html(link) == "link text after"
    bel_link = f"{ESC}]8;id=x;https://e.com{chr(7)}x{ESC}]8;;{chr(7)}"
    assert ansi_to_html(bel_link) == "x"


def test_osc_payload_cannot_inject_html():
    log = f'{ESC}]8;;javascript:alert(1)"><b>{ESC}\\<img src=x onerror=alert(1)>{ESC}]8;;{ESC}\\'
    assert ansi_to_html(log) == "&lt;img src=x onerror=alert(1)&gt;"


def test_unterminated_osc_ends_at_a_control_character():
    assert ansi_to_html(f"a{ESC}]0;title\nb") == "a\nb"
    assert ansi_to_html(f"a{ESC}]0;title{ESC}[31mb") == "a" + span("b", "ansi-fg-1")


def test_charset_and_two_byte_escapes_are_removed():
    assert ansi_to_html(f"{ESC}(Bx{ESC})0y{ESC}(0z") == "xyz"
    assert ansi_to_html(f"{ESC}7a{ESC}8b{ESC}=c{ESC}>d{ESC}Me{ESC}cf{ESC}\\g") == "abcdefg"
    assert ansi_to_html(f"{ESC}Pq#0;2;0;0;0{ESC}\\x{ESC}_Gf=24;AAAA{ESC}\\y") == "xy"


def test_lone_escape_is_dropped_alone():
    assert ansi_to_html(f"a{ESC}\nb{ESC}{ESC}[31mc") == "a\nb" + span("c", "ansi-fg-1")
    assert ansi_to_html(f"a{ESC}é") == "aé"


def test_control_characters_are_dropped_except_newline_and_tab():
    assert ansi_to_html("a\x00b\x07c\x08d\x0be\x0cf\x7fg\x85h\x9bi\tj\n") == "abcdefghi\tj\n"


# -- carriage returns


def test_carriage_return_overwrites_the_line():
    assert ansi_to_html("10%\r50%\r100%\ndone\n") == "100%\ndone\n"
    assert ansi_to_html("keep\n10%\r100%") == "keep\n100%"
    assert ansi_to_html("a\r\rb") == "b"


def test_crlf_is_a_newline():
    assert ansi_to_html("a\r\nb\r\n") == "a\nb\n"
    assert ansi_to_html("a\r\r\nb") == "a\nb"


def test_carriage_return_with_nothing_visible_after_keeps_the_line():
    assert ansi_to_html(f"abc\r{ESC}[0m\nx") == "abc\nx"
    assert ansi_to_html("abc\r") == "abc"


def test_carriage_return_keeps_styles_of_discarded_text():
    log = f"{ESC}[31m 10%\r{ESC}[1m 100%{ESC}[0m\n"
    assert ansi_to_html(log) == span(" 100%", "ansi-bold ansi-fg-1") + "\n"
    log = f"{ESC}[32mok\n{ESC}[31m 10%\r 20%\r{ESC}[0m 30%\nend"
    assert ansi_to_html(log) == span("ok\n", "ansi-fg-2") + " 30%\nend"


def test_carriage_return_then_erase_line():
    assert ansi_to_html(f"old\r{ESC}[Knew\n") == "new\n"
    assert ansi_to_html(f"old{ESC}[2K\rnew\n") == "new\n"
    assert ansi_to_html(f"a\nold{ESC}[2Knew") == "a\nnew"


def test_carriage_return_rule_is_per_chunk():
    renderer = AnsiRenderer()
    assert renderer.feed("abc") == "abc"
    assert renderer.feed("\rxyz\n") == "xyz\n"  # "abc" was already returned


def test_carriage_return_at_chunk_end_is_held_for_crlf():
    renderer = AnsiRenderer()
    assert renderer.feed("line\r") == "line"
    assert renderer.feed("\nnext\r") == "\nnext"
    assert renderer.feed("\r") == ""
    assert renderer.feed("\nlast") == "\nlast"
    assert renderer.flush() == ""


# -- chunks


def test_escape_split_across_feeds():
    renderer = AnsiRenderer()
    assert renderer.feed(f"a{ESC}[3") == "a"
    assert renderer.feed("1mred") == span("red", "ansi-fg-1")
    assert renderer.feed(ESC) == ""
    assert renderer.feed("[") == ""
    assert renderer.feed("0") == ""
    assert renderer.feed("mplain") == "plain"
    assert renderer.feed(f"{ESC}(") == ""
    assert renderer.feed("Bx") == "x"


def test_osc_split_across_feeds():
    renderer = AnsiRenderer()
    assert renderer.feed(f"a{ESC}]8;;https://exa") == "a"
    assert renderer.feed("mple.com/long/url") == ""
    assert renderer.feed(f"{ESC}") == ""
    assert renderer.feed(f"\\link{ESC}]8;;{ESC}\\b") == "linkb"


def test_state_carries_across_fragments_and_each_is_closed():
    renderer = AnsiRenderer()
    assert renderer.feed(f"{ESC}[1;31mA") == span("A", "ansi-bold ansi-fg-1")
    assert renderer.feed("B\n") == span("B\n", "ansi-bold ansi-fg-1")
    assert renderer.feed("") == ""
    assert renderer.feed(f"{ESC}[22mC") == span("C", "ansi-fg-1")
    assert renderer.feed(f"{ESC}[0mD") == "D"
    assert renderer.flush() == ""


def test_every_split_renders_the_same_styled_text():
    log = (
        f"{ESC}[1;31merror{ESC}[0m: <x> & y\r\n"
        f"{ESC}]8;;https://e.com{ESC}\\link{ESC}]8;;{chr(7)} {ESC}(B"
        f"{ESC}[38;5;196;48;2;1;2;3mrgb{ESC}[39m bg{ESC}[K{ESC}[m\n\tend"
    )
    whole = styled_chars([ansi_to_html(log)])
    assert "".join(c for c, _ in whole) == "error: <x> & y\nlink rgb bg\n\tend"
    for cut in range(len(log) + 1):
        renderer = AnsiRenderer()
        fragments = [renderer.feed(log[:cut]), renderer.feed(log[cut:]), renderer.flush()]
        assert styled_chars(fragments) == whole, cut
    renderer = AnsiRenderer()
    fragments = [renderer.feed(c) for c in log] + [renderer.flush()]
    assert styled_chars(fragments) == whole


def test_fragments_are_balanced():
    line = f"{ESC}[32mok{ESC}[0m {ESC}[1;4;38;5;33mbold <b>{ESC}[22m under{ESC}[0m{ESC}[7m inv\n"
    log = line * 50 + f"{ESC}[31munterminated red at the end"
    renderer = AnsiRenderer()
    fragments = []
    pos, size = 0, 1
    while pos < len(log):
        fragments.append(renderer.feed(log[pos : pos + size]))
        pos += size
        size = size % 37 + 3
    fragments.append(renderer.flush())
    opened = 0
    for fragment in fragments:
        parsed = assert_balanced(fragment)
        opened += parsed.opened
    assert opened > 100
    assert styled_chars(fragments) == styled_chars([ansi_to_html(log)])


def test_flush_drops_an_incomplete_escape():
    renderer = AnsiRenderer()
    assert renderer.feed(f"a{ESC}[31") == "a"
    assert renderer.flush() == ""
    assert ansi_to_html(f"a{ESC}[31;") == "a"
    assert ansi_to_html(f"a{ESC}") == "a"
    assert ansi_to_html(f"a{ESC}]0;title") == "a"


def test_unbounded_unterminated_escape_is_dropped():
    renderer = AnsiRenderer()
    assert renderer.feed(f"a{ESC}[" + "1;" * MAX_PENDING) == "a"
    out = renderer.feed("4mX")
    assert "X" in out
    assert "ansi-underline" not in out
    # a sequence growing one small chunk at a time is dropped too
    renderer = AnsiRenderer()
    assert renderer.feed(f"{ESC}[") == ""
    outs = [renderer.feed("1;") for _ in range(1000)]
    assert all(len(out) <= 2 for out in outs)
    assert "ansi-bold" not in renderer.feed("mX")


def test_ansi_to_html_is_feed_plus_flush():
    log = f"{ESC}[31mred\r\n{ESC}[1m"
    renderer = AnsiRenderer()
    assert ansi_to_html(log) == renderer.feed(log) + renderer.flush()


def test_large_input_completes():
    line = (
        f"{ESC}[32mINFO{ESC}[0m step <{{n}}> compiling crate & linking "
        f"{ESC}[1;38;5;33mtarget{ESC}[0m{ESC}[K\r\n"
    )
    progress = "".join(f"\r[{'=' * i}{' ' * (20 - i)}] {i * 5}%" for i in range(21)) + "\n"
    chunk = line * 40 + progress
    log = chunk * (5_000_000 // len(chunk))
    assert len(log) > 4_500_000
    html_out = ansi_to_html(log)
    assert html_out.count("\n") == log.count("\n")
    assert html_out.count("<span") == html_out.count("</span>")
    assert len(log) // 2 < len(html_out) < 4 * len(log)
    assert ESC not in html_out
    assert "\r" not in html_out
    assert html_out.count("[====================] 100%") == log.count(progress)
    assert "] 95%" not in html_out


# -- stylesheet


def test_css_has_a_rule_for_every_class():
    css = CSS.read_text()
    classes = ["ansi-bold", "ansi-dim", "ansi-italic", "ansi-underline", "ansi-inverse"]
    classes += [f"ansi-{kind}-{n}" for kind in ("fg", "bg") for n in range(16)]
    for name in classes:
        assert re.search(rf"\.{name}\s*\{{", css), name
    assert re.search(r"\.ansi-fg-1\s*\{\s*color:", css)
    assert re.search(r"\.ansi-bg-1\s*\{\s*background-color:", css)
    # explicit colours must win over the swapped defaults of inverse
    assert css.index(".ansi-inverse") < css.index(".ansi-fg-0")


def test_huge_sgr_sequence_completes():
    out = ansi_to_html(f"{ESC}[4;" + "22;" * 2_000_000 + "mX")
    assert out == span("X", "ansi-underline")
