"""A command's stdout apart from its stderr through one merged stream (`pikaci/stdout_apart.py`),
run by a real `sh` with the streams merged as the builder's connection merges them."""

from __future__ import annotations

import os
import subprocess
from typing import Tuple

from pikaci.stdout_apart import MARK_PREFIX, apart_script, split


def merged(command: str) -> Tuple[int, bytes, bytes]:
    apart = apart_script(command)
    done = subprocess.run(
        ["sh", "-c", apart.script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
    )
    out, err = split(done.stdout, apart.mark)
    return done.returncode, out, err


def test_stderr_before_and_after_stdout_stays_out_of_it() -> None:
    code, out, err = merged("echo welcome >&2; echo '[1, 2]'; echo warning >&2")
    assert (code, out, err) == (0, b"[1, 2]\n", b"welcome\nwarning")


def test_the_exit_status_is_the_commands() -> None:
    code, out, err = merged("echo partial; echo broken >&2; exit 7")
    assert (code, out, err) == (7, b"partial\n", b"broken")
    code, _, err = merged("no-such-command-here")
    assert code == 127 and b"not found" in err


def test_binary_stdout_comes_back_byte_for_byte() -> None:
    data = os.urandom(200_000) + b"\n"
    apart = apart_script("cat")
    done = subprocess.run(
        ["sh", "-c", apart.script], input=data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert split(done.stdout, apart.mark) == (data, b"")


def test_a_command_with_a_trailing_comment_or_heredoc_still_runs() -> None:
    assert merged("echo a # trailing comment")[:2] == (0, b"a\n")
    assert merged("cat <<'END'\nline\nEND")[:2] == (0, b"line\n")


def test_without_the_mark_nothing_is_taken_as_stdout() -> None:
    """A command killed before it finished: what it printed is not parsed."""
    assert split(b'[{"half": ', b"pikaci-stderr-follows-00") == (b"", b'[{"half": ')


def test_marks_differ_and_a_printed_mark_of_another_call_is_plain_output() -> None:
    first, second = apart_script("true"), apart_script("true")
    assert first.mark != second.mark and first.mark.startswith(MARK_PREFIX.encode())
    _, out, err = merged(f"echo {second.mark.decode()}")
    assert out == second.mark + b"\n" and err == b""
