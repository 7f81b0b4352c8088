"""Thin typed wrapper around the nix CLI.

Flags are the ones both Debian's Nix 2.8 and current Nix understand: `nix build --json` (not
`--print-out-paths`, which 2.8 lacks), `nix-store --check-validity`, `nix-store --query
--requisites`. Every command is handed to a log callback before it runs, and its output as it
arrives, so the host log of every job that consumes a build shows exactly what ran.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, List, Optional, Sequence, Tuple

import orjson

NIX_FEATURES = ("--extra-experimental-features", "nix-command flakes")
MISSING_NIX = (
    "`{program}` not found on PATH: install Nix (Debian: apt-get install nix-bin, "
    "or ./scripts/bootstrap.sh)"
)

LogLine = Callable[[str], None]


class NixError(Exception):
    """One line: what was being done and nix's own message."""


@dataclass(frozen=True)
class BuildRef:
    """What to build: a flake attribute of a directory, or an attribute of a classic file."""

    attr: str
    file: Optional[str] = None  # relative to the source directory; None = the directory's flake

    def args(self, source_dir: Path) -> List[str]:
        if self.file is None:
            return [f"path:{source_dir}#{self.attr}"]
        return ["--file", str(source_dir / self.file), self.attr]

    def describe(self, source_dir: Path) -> str:
        if self.file is None:
            return f"path:{source_dir}#{self.attr}"
        return f"{source_dir / self.file}#{self.attr}"


def build(ref: BuildRef, source_dir: Path, log: LogLine, program: str = "nix") -> List[str]:
    """Realise `ref` and return its output store paths (every output, in nix's order)."""
    try:
        code, out, err_tail = run_logged(
            [program, *NIX_FEATURES, "build", "--no-link", "--json", *ref.args(source_dir)], log
        )
    except NixError as exc:
        raise NixError(f"nix build of `{ref.attr}` failed: {exc}") from None
    if code != 0:
        raise NixError(f"nix build of `{ref.attr}` failed: {summarize_error(err_tail, code)}")
    try:
        entries = orjson.loads(out)
        paths = [path for entry in entries for path in entry["outputs"].values()]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise NixError(
            f"nix build of `{ref.attr}` printed unexpected JSON: {out[:200]!r}"
        ) from None
    if not paths or not all(isinstance(p, str) and p.startswith("/") for p in paths):
        raise NixError(f"nix build of `{ref.attr}` returned no store path")
    return [str(p) for p in paths]


def is_valid(path: str, log: LogLine, program: str = "nix-store") -> bool:
    """Is `path` a valid store path? (A process; up-to-date checks use `Path.exists` instead.)"""
    code, _, _ = run_logged([program, "--check-validity", path], log)
    return code == 0


def closure(paths: Sequence[str], log: LogLine, program: str = "nix-store") -> List[str]:
    """Every store path `paths` need at run time, themselves included."""
    code, out, err_tail = run_logged([program, "--query", "--requisites", *paths], log)
    if code != 0:
        raise NixError(f"nix-store --query --requisites failed: {summarize_error(err_tail, code)}")
    return [line for line in out.decode().splitlines() if line]


def run_logged(argv: Sequence[str], log: LogLine) -> Tuple[int, bytes, List[str]]:
    """Run a nix command: log it, stream stderr lines to `log`, return (code, stdout, stderr).

    Nix writes progress and errors to stderr and results to stdout.
    """
    log(f"$ {shlex.join(argv)}")
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        raise NixError(MISSING_NIX.format(program=argv[0])) from None
    assert proc.stdout is not None and proc.stderr is not None
    err_lines: List[str] = []
    pump = threading.Thread(target=_pump_stderr, args=(proc.stderr, log, err_lines), daemon=True)
    pump.start()
    out = proc.stdout.read()
    code = proc.wait()
    pump.join()
    return code, out, err_lines


def _pump_stderr(stream: IO[bytes], log: LogLine, keep: List[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        keep.append(line)
        log(line)
    stream.close()


def summarize_error(stderr_lines: Sequence[str], code: int) -> str:
    """nix's error as one line: the first `error:` line and, if any, where it points."""
    lines = [line.strip() for line in stderr_lines if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("error:"):
            message = line[len("error:") :].strip().rstrip(";")
            where = next(
                (follow for follow in lines[index + 1 : index + 4] if follow.startswith("at ")),
                None,
            )
            if where:
                return f"{message} ({where.rstrip(':')})"
            # a failed builder: its last log line (`> ...`) usually says why
            said = [follow[1:].strip() for follow in lines[index + 1 :] if follow.startswith(">")]
            return f"{message}: {said[-1]}" if said and said[-1] else message
    return lines[-1] if lines else f"exit status {code}"
