"""A command's stdout kept apart from its stderr where only one stream comes back.

A command run over the builder's connection (or under `sh -c` with the streams merged) returns
stdout and stderr as one stream. Where pikaci parses what a command prints (JSON, a tar
archive), anything on stderr breaks the parse: the first `incus` command a user ever runs
prints a welcome text there. `apart_script` wraps the command so that its stdout streams first,
untouched (binary or not), and its stderr follows a random mark line; `split` takes them apart
again. The command's exit status is kept."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Tuple

MARK_PREFIX = "pikaci-stderr-follows-"


@dataclass(frozen=True)
class Apart:
    script: str
    mark: bytes


def apart_script(command: str) -> Apart:
    """`command` (a shell command line) with its stderr held back and sent after a mark."""
    mark = f"{MARK_PREFIX}{secrets.token_hex(8)}"
    # stdout goes to fd 3 (the real stdout) as it comes; stderr is captured in `errs`, and the
    # substitution's status is the command's
    script = "\n".join(
        [
            f"{{ errs=$( {{ {command}\n}} 2>&1 1>&3 3>&- ); code=$?; }} 3>&1",
            f"printf '\\n%s\\n' {mark}",
            "printf '%s' \"$errs\"",
            'exit "$code"',
        ]
    )
    return Apart(script, mark.encode())


def split(output: bytes, mark: bytes) -> Tuple[bytes, bytes]:
    """(stdout, stderr) of an `apart_script` run. Without the mark (the command was killed
    before it finished), everything is taken as stderr: nothing half-written gets parsed."""
    framed = b"\n" + mark + b"\n"
    index = output.rfind(framed)
    if index < 0:
        return b"", output
    return output[:index], output[index + len(framed) :]
