"""CI log text with ANSI escape sequences -> safe HTML fragments for the log viewer.

`AnsiRenderer` is fed successive chunks of one log (a live tail) and returns one HTML fragment
per chunk. Every fragment is balanced: all text is escaped, and a `<span>` opened in a fragment
is closed at its end; the next fragment re-opens a span for the style still active. So the
fragments can be appended to the page one by one, and their concatenation is the whole log.

What is rendered (stdlib only, linear time, one compiled regex over each chunk):

- SGR (`ESC [ ... m`) becomes `<span class="ansi-...">` (see static/ansi.css), with 256-colour
  cube/grey and truecolour values as an inline `style`. Malformed or out-of-range parameters
  are ignored. Inverse swaps foreground and background and adds `ansi-inverse`, whose rule
  paints the default colours swapped.
- Every other escape sequence is removed: other CSI sequences, the string sequences OSC, DCS,
  SOS, PM and APC (`ESC ] P X ^ _`, up to BEL or ST; an OSC 8 hyperlink keeps its text), and
  the other escapes (`ESC` + intermediates + final, e.g. `ESC ( B`). A string sequence is
  also ended by any control character (a newline, say), so an unterminated one swallows at
  most the rest of its line. An `ESC` that starts nothing valid is dropped alone.
- Control characters other than `\\n` and `\\t` are dropped (C0, DEL and C1).
- `\\n` and `\\r\\n` (any run of `\\r` before `\\n`) are one newline. A bare `\\r` means
  the line is overwritten: the line's text so far is discarded as soon as visible text (or an
  erase-line `ESC [ K` / `ESC [ 2 K`) follows, so only the text after the last bare `\\r` of
  the line is kept, while a `\\r` followed by nothing visible keeps the line, as a terminal
  would. This applies within one fed chunk only (see `AnsiRenderer`).
- An escape sequence split between two chunks is held back and completed by the next chunk, up
  to `MAX_PENDING` characters (then dropped, so memory stays bounded); a string sequence still
  open at the end of a chunk is not held but skipped on into the next chunk.
"""

from __future__ import annotations

import functools
import html
import re
from typing import List, NamedTuple, Optional, Tuple, Union

__all__ = ["MAX_PENDING", "AnsiRenderer", "ansi_to_html"]

MAX_PENDING = 256
"""An escape sequence split across chunks is held back up to this length, then dropped."""

# Every character of a chunk is matched by exactly one alternative, first match wins.
_TOKEN = re.compile(
    r"(?P<text>[^\x00-\x08\x0b-\x1f\x7f-\x9f]+)"  # printable text, tabs and newlines
    # SGR, the common case, with the text that follows it (fewer tokens for coloured logs)
    r"|(?P<sgr>\x1b\[(?P<sgr_params>[0-?]*)m(?P<sgr_text>[^\x00-\x08\x0b-\x1f\x7f-\x9f]*))"
    r"|(?P<nl>\r+\n)"
    r"|(?P<cr>\r+)"
    r"|(?P<csi>\x1b\[(?P<params>[0-?]*)(?P<inter>[ -/]*)(?P<final>[@-~])?)"
    r"|(?P<string>\x1b[\]PX^_][^\x00-\x1f]*(?P<st>\x07|\x1b\\)?)"
    r"|(?P<esc>\x1b[ -/]*[0-~])"
    r"|(?P<partial>\x1b[ -/]*)"  # an escape without its final byte
    r"|(?P<ctl>[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f]+)"  # other controls, dropped
)
_HTML_SPECIAL = re.compile(r"[&<>\"']")
# The rest of a string sequence (OSC, DCS, ...) left open at the end of the previous chunk.
_STRING_REST = re.compile(r"[^\x00-\x1f]*(?P<st>\x07|\x1b\\)?")

_MAX_FIELDS = 64
"""Fields of one SGR sequence beyond this many are ignored (xterm keeps 30)."""

_CUBE_LEVELS = (0, 95, 135, 175, 215, 255)

Color = Union[int, str]
"""A palette index 0-15 (rendered as a class) or `#rrggbb` (rendered as an inline style)."""


def _int(field: str) -> Optional[int]:
    """One SGR parameter: empty is 0; anything not a short run of ASCII digits is invalid."""
    if not field:
        return 0
    if len(field) > 9 or not field.isdigit():
        return None
    return int(field)


def _rgb(r: int, g: int, b: int) -> str:
    return f"#{r:02x}{g:02x}{b:02x}"


def _color_256(n: Optional[int]) -> Optional[Color]:
    if n is None or n > 255:
        return None
    if n < 16:
        return n
    if n < 232:
        i = n - 16
        return _rgb(_CUBE_LEVELS[i // 36], _CUBE_LEVELS[i // 6 % 6], _CUBE_LEVELS[i % 6])
    grey = 8 + 10 * (n - 232)
    return _rgb(grey, grey, grey)


def _color_rgb(values: List[Optional[int]]) -> Optional[Color]:
    if len(values) != 3:
        return None
    r, g, b = values
    if r is None or g is None or b is None or max(r, g, b) > 255:
        return None
    return _rgb(r, g, b)


def _extended_color(mode: Optional[int], values: List[Optional[int]]) -> Optional[Color]:
    """`38;5;n` / `38;2;r;g;b` (after the 38): the colour, or None when malformed."""
    if mode == 5 and len(values) == 1:
        return _color_256(values[0])
    if mode == 2:
        return _color_rgb(values)
    return None


def _cut(out: List[str], item: int, cut: int) -> None:
    """Drop everything of `out` after offset `cut` of `out[item]` (item -1: everything)."""
    if item >= 0:
        out[item] = out[item][:cut]
    del out[item + 1 :]


class _Style(NamedTuple):
    """One SGR state (immutable, so style transitions and tags can be cached)."""

    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    inverse: bool = False
    fg: Optional[Color] = None
    bg: Optional[Color] = None


_PLAIN = _Style()


class _Pen:
    """A mutable copy of a `_Style` while one SGR sequence is applied to it."""

    __slots__ = ("bg", "bold", "dim", "fg", "inverse", "italic", "underline")

    def __init__(self, style: _Style) -> None:
        self.bold, self.dim, self.italic, self.underline, self.inverse, self.fg, self.bg = style

    def style(self) -> _Style:
        return _Style(
            self.bold, self.dim, self.italic, self.underline, self.inverse, self.fg, self.bg
        )

    def apply(self, params: str) -> None:
        fields = params.split(";", _MAX_FIELDS)[:_MAX_FIELDS]
        count = len(fields)
        i = 0
        while i < count:
            field = fields[i]
            i += 1
            if ":" in field:
                self.apply_subparams([_int(sub) for sub in field.split(":")])
                continue
            code = _int(field)
            if code in (38, 48, 58):
                mode = _int(fields[i]) if i < count else None
                size = 1 if mode == 5 else 3 if mode == 2 else 0
                values = [_int(f) for f in fields[i + 1 : i + 1 + size]]
                i = min(count, i + 1 + size)
                color = _extended_color(mode, values)
                if color is not None:
                    self.set_color(code, color)
            elif code is not None:
                self.apply_code(code)

    def apply_subparams(self, subs: List[Optional[int]]) -> None:
        """Colon forms: `38:5:n`, `38:2:r:g:b`, `38:2:colorspace:r:g:b`, `4:n`."""
        head = subs[0]
        if head in (38, 48, 58) and len(subs) >= 2:
            values = subs[2:]
            if subs[1] == 2 and len(values) >= 4:
                values = values[1:4]  # skip the colour space id
            color = _extended_color(subs[1], values)
            if color is not None:
                self.set_color(head, color)
        elif head == 4 and len(subs) == 2 and subs[1] is not None:
            self.underline = subs[1] != 0

    def set_color(self, code: Optional[int], color: Color) -> None:
        if code == 38:
            self.fg = color
        elif code == 48:
            self.bg = color
        # 58 (underline colour) is parsed so its values are not read as codes, then ignored

    def apply_code(self, code: int) -> None:
        if code == 0:
            self.bold = self.dim = self.italic = self.underline = self.inverse = False
            self.fg = self.bg = None
        elif code == 1:
            self.bold = True
        elif code == 2:
            self.dim = True
        elif code == 3:
            self.italic = True
        elif code == 4:
            self.underline = True
        elif code == 7:
            self.inverse = True
        elif code == 22:
            self.bold = self.dim = False
        elif code == 23:
            self.italic = False
        elif code == 24:
            self.underline = False
        elif code == 27:
            self.inverse = False
        elif 30 <= code <= 37:
            self.fg = code - 30
        elif code == 39:
            self.fg = None
        elif 40 <= code <= 47:
            self.bg = code - 40
        elif code == 49:
            self.bg = None
        elif 90 <= code <= 97:
            self.fg = code - 90 + 8
        elif 100 <= code <= 107:
            self.bg = code - 100 + 8
        # anything else (blink, conceal, strike, fonts, ...) is ignored


def _apply_sgr(style: _Style, params: str) -> _Style:
    """The style after `ESC [ params m`."""
    if params[:1] in ("<", "=", ">", "?"):
        return style  # a private sequence (e.g. xterm's `ESC [ > 4 ; 1 m`), not SGR
    pen = _Pen(style)
    pen.apply(params)
    return pen.style()


@functools.lru_cache(maxsize=4096)
def _transition(style: _Style, params: str) -> Tuple[_Style, str]:
    """`_apply_sgr` and the new style's tag, cached: logs repeat a few sequences many times."""
    after = _apply_sgr(style, params)
    return after, _span_tag(after)


@functools.lru_cache(maxsize=4096)
def _span_tag(style: _Style) -> str:
    """The opening `<span ...>` for a style, or "" when unstyled."""
    classes: List[str] = []
    styles: List[str] = []
    if style.bold:
        classes.append("ansi-bold")
    if style.dim:
        classes.append("ansi-dim")
    if style.italic:
        classes.append("ansi-italic")
    if style.underline:
        classes.append("ansi-underline")
    fg, bg = style.fg, style.bg
    if style.inverse:
        classes.append("ansi-inverse")
        fg, bg = bg, fg
    if isinstance(fg, int):
        classes.append(f"ansi-fg-{fg}")
    elif fg is not None:
        styles.append(f"color:{fg}")
    if isinstance(bg, int):
        classes.append(f"ansi-bg-{bg}")
    elif bg is not None:
        styles.append(f"background-color:{bg}")
    attrs = ""
    if classes:
        attrs += f' class="{" ".join(classes)}"'
    if styles:
        attrs += f' style="{";".join(styles)}"'
    return f"<span{attrs}>" if attrs else ""


class AnsiRenderer:
    """Stateful: feed successive chunks of one log; SGR state carries across chunks.

    The bare-`\\r` overwrite rule applies within one fed chunk only: text of the line that was
    returned in an earlier fragment stays. A `\\r` at the very end of a chunk is held back until
    the next chunk, since it may be the first half of `\\r\\n`.
    """

    def __init__(self) -> None:
        self._style = _PLAIN
        self._pending = ""  # an incomplete escape sequence or a `\r` held for the next chunk
        self._in_string = False  # the previous chunk ended inside an OSC/DCS/... sequence

    def feed(self, text: str) -> str:
        """Render one chunk; returns a balanced HTML fragment."""
        chunk = self._pending + text
        self._pending = ""
        return self._render(chunk, final=False)

    def flush(self) -> str:
        """Emit anything held back (an incomplete escape at the very end is dropped)."""
        chunk = self._pending
        self._pending = ""
        return self._render(chunk, final=True)

    def _render(self, text: str, *, final: bool) -> str:
        # The hot loop, with everything it touches in locals. A text token may span lines, so
        # the start of the current line is tracked as (item of `out`, offset just after its
        # last newline); a bare \r followed by visible text cuts `out` back to there.
        escape = html.escape
        needs_escape = _HTML_SPECIAL.search
        transition = _transition
        style = self._style
        tag = _span_tag(style)
        out: List[str] = []
        current = ""  # the tag of the span open at the end of `out`
        line_item = -1  # the item of `out` holding the last newline, -1: none in this chunk
        line_cut = 0  # the offset just after that newline
        line_current = ""  # the span open there
        overwrite = False  # a bare \r was seen on the current line
        end = len(text)
        pos = 0
        if self._in_string:
            rest = _STRING_REST.match(text)
            assert rest is not None  # the pattern matches the empty string
            pos = rest.end()
            self._in_string = pos == end and rest.group("st") is None and not final

        for m in _TOKEN.finditer(text, pos):
            kind = m.lastgroup
            if kind == "text":
                piece = m.group()
            elif kind == "sgr":
                params = m.group("sgr_params")
                if len(params) <= 64:
                    style, tag = transition(style, params)
                else:  # not worth caching
                    style = _apply_sgr(style, params)
                    tag = _span_tag(style)
                piece = m.group("sgr_text")
                if not piece:
                    continue
            elif kind == "nl":
                piece = "\n"
            else:
                if kind == "cr":
                    if m.end() == end and not final:
                        self._pending = "\r"  # one \r stands for the run
                    else:
                        overwrite = True
                elif kind == "csi":
                    if m.group("final") is None:
                        self._hold(m, end, final)
                    elif (
                        m.group("final") == "K"
                        and not m.group("inter")
                        and (
                            m.group("params") == "2"
                            or (overwrite and m.group("params") in ("", "0"))
                        )
                    ):
                        _cut(out, line_item, line_cut)  # erase line: the cursor was at its start
                        current = line_current
                        overwrite = False
                elif kind == "string":
                    if m.group("st") is None and m.end() == end and not final:
                        self._in_string = True
                elif kind == "partial":
                    self._hold(m, end, final)
                # "esc" and "ctl" are dropped
                continue

            # text (printable characters, tabs, newlines)
            if needs_escape(piece):
                piece = escape(piece)
            if overwrite:
                if piece[0] != "\n":  # visible text follows the \r on its line
                    _cut(out, line_item, line_cut)
                    current = line_current
                overwrite = False
            if tag != current:
                if current:
                    out.append("</span>")
                if tag:
                    out.append(tag)
                current = tag
            out.append(piece)
            if "\n" in piece:
                line_item = len(out) - 1
                line_cut = piece.rfind("\n") + 1
                line_current = current

        self._style = style
        if current:
            out.append("</span>")
        return "".join(out)

    def _hold(self, m: re.Match[str], end: int, final: bool) -> None:
        """Keep an incomplete escape at the end of the chunk for the next one (bounded)."""
        if m.end() == end and not final and len(m.group()) <= MAX_PENDING:
            self._pending = m.group()


def ansi_to_html(text: str) -> str:
    """Render a whole log at once: `AnsiRenderer().feed(text) + flush()`."""
    renderer = AnsiRenderer()
    return renderer.feed(text) + renderer.flush()
