"""Path globs with Rust `globset` defaults: whole-path match, `*` and `?` may cross `/`, `**`,
`[...]`, `{a,b}`, case-sensitive; compiled once into a regular expression."""

from __future__ import annotations

import re
from typing import List, Pattern, Tuple


class GlobError(ValueError):
    """An invalid glob, in globset's words."""


# -- globs ------------------------------------------------------------------------------------


def compile_glob(pattern: str) -> Pattern[str]:
    """The glob as one anchored regex, with globset's default options.

    `*` and `?` cross `/` (literal_separator off); `**/` at the start matches any (or no)
    leading directories, `/**` at the end anything below, `/**/` zero or more directories, and
    `**` elsewhere is two `*`. `[...]`/`[!...]`/`[^...]` are classes, `{a,b}` alternatives (may
    nest), `\\` escapes the next character. Matching is case-sensitive.
    """
    body, end = _translate(pattern, 0, 0)
    if end != len(pattern):  # pragma: no cover - _translate consumes everything at depth 0
        raise GlobError(f"invalid glob {pattern!r}")
    return re.compile(f"(?s:{body})\\Z")


def _translate(pattern: str, i: int, depth: int) -> Tuple[str, int]:
    """Translate from `i` up to the `}` or `,` closing this depth (or the end at depth 0)."""
    out: List[str] = []
    n = len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise GlobError(f"invalid glob {pattern!r}: dangling '\\'")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif char == "*":
            i = _star(pattern, i, out)
        elif char == "?":
            out.append(".")
            i += 1
        elif char == "[":
            text, i = _class(pattern, i)
            out.append(text)
        elif char == "{":
            alternatives: List[str] = []
            i += 1
            while True:
                text, i = _translate(pattern, i, depth + 1)
                alternatives.append(text)
                if i >= n:
                    raise GlobError(f"invalid glob {pattern!r}: unclosed alternate group")
                i += 1
                if pattern[i - 1] == "}":
                    break
            out.append("(?:" + "|".join(alternatives) + ")")
        elif char == "}" and depth > 0:
            return "".join(out), i
        elif char == "}":
            raise GlobError(f"invalid glob {pattern!r}: unopened alternate group")
        elif char == "," and depth > 0:
            return "".join(out), i
        else:
            out.append(re.escape(char))
            i += 1
    if depth > 0:
        raise GlobError(f"invalid glob {pattern!r}: unclosed alternate group")
    return "".join(out), i


def _star(pattern: str, i: int, out: List[str]) -> int:
    """`*` or one of the `**` forms starting at `i`; the index after it."""
    if pattern[i + 1 : i + 2] != "*":
        out.append(".*")
        return i + 1
    after = pattern[i + 2 : i + 3]
    at_start = i == 0
    after_slash = i > 0 and pattern[i - 1] == "/"
    if (at_start or after_slash) and after == "/":
        out.append("(?:.*/)?")  # any number of directories, none included
        return i + 3
    # `**` alone, `/**` at the end, and `**` anywhere else all come down to "anything"
    out.append(".*")
    return i + 2


def _class(pattern: str, i: int) -> Tuple[str, int]:
    start = i
    i += 1
    negated = i < len(pattern) and pattern[i] in "!^"
    if negated:
        i += 1
    items: List[str] = []
    first = True
    while i < len(pattern) and (first or pattern[i] != "]"):
        low = pattern[i]
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            high = pattern[i + 2]
            if low > high:
                raise GlobError(f"invalid glob {pattern!r}: invalid range; {low!r} > {high!r}")
            items.append(f"{_class_char(low)}-{_class_char(high)}")
            i += 3
        else:
            items.append(_class_char(low))
            i += 1
        first = False
    if i >= len(pattern):
        raise GlobError(
            f"invalid glob {pattern!r}: unclosed character class at {start}; missing ']'"
        )
    return ("[^" if negated else "[") + "".join(items) + "]", i + 1


def _class_char(char: str) -> str:
    return "\\" + char if char in "\\]^-[" else char
