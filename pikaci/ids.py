"""Identifier rules shared by the catalog, the state root and the CLI.

Ids become directory names, doit task names (`lane:<id>`) and Incus instance seeds, so they are
restricted to a safe set: no separators, no `:` (doit's sub-task separator), no leading dot.
"""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ID_RULE = "1-128 characters from [A-Za-z0-9._-], starting with a letter or digit"


def is_safe_id(text: object) -> bool:
    return isinstance(text, str) and ID_PATTERN.fullmatch(text) is not None
