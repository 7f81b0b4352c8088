"""What one invocation prints: console lines, `jsonl` lifecycle events and the closing summary.

The streams are captured when the run's session is made: doit swaps `sys.stdout` while task
actions run, and what pikaci prints must not land in doit's captured task output.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, Any, Dict

from pikaci.model import RUN_FAILED, RunRecord, dumps_line, dumps_pretty
from pikaci.store import StateRoot
from pikaci.terminal import strip_controls_text


class Console:
    def __init__(self, output: str, results_only_stdout: bool = False) -> None:
        self.output = output  # human | json | jsonl
        self.results_only_stdout = results_only_stdout
        self.stdout: IO[str] = sys.stdout
        self.stderr: IO[str] = sys.stderr
        # re-entrant: the signal handler writes a line while the main thread may be mid-write
        self._lock = threading.RLock()

    @property
    def stream(self) -> IO[str]:
        """Where people's lines go: stdout, unless stdout carries JSON or the result lines."""
        if self.output == "human" and not self.results_only_stdout:
            return self.stdout
        return self.stderr

    def line(self, text: str) -> None:
        """One line for people; on a terminal a lane's control sequences (titles, cursor
        movement, clearing) are dropped and only its colours pass."""
        stream = self.stream
        if self._is_terminal(stream):
            text = strip_controls_text(text)
        with self._lock:
            stream.write(text + "\n")
            stream.flush()

    @staticmethod
    def _is_terminal(stream: IO[str]) -> bool:
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    def warn(self, text: str) -> None:
        with self._lock:
            self.stderr.write(f"pikaci: warning: {text}\n")

    def event(self, event: Dict[str, Any]) -> None:
        """One lifecycle event on stdout, in `jsonl` mode only."""
        if self.output != "jsonl":
            return
        with self._lock:
            self.stdout.write(dumps_line(event).decode())
            self.stdout.flush()

    def flush(self) -> None:
        self.stdout.flush()
        self.stderr.flush()

    def summary(self, record: RunRecord, state: StateRoot) -> None:
        """The run as stdout's contract wants it (`<run> <job> <status>` lines, or the record
        in `json` mode), then a readable summary on stderr."""
        out = self.stdout
        if self.output == "json":
            out.write(dumps_pretty(record.to_dict()).decode())
        elif self.output == "human":
            for job in record.jobs:
                out.write(f"{record.run_id} {job.id} {job.status}\n")
            if not record.jobs:  # skipped, or failed before any lane
                out.write(f"{record.run_id} {record.target_id or '-'} {record.status}\n")
        bundle = state.runs_dir / record.run_id
        reused = sum(1 for job in record.jobs if job.reused_from_run)
        summary = f"pikaci: run {record.run_id} {record.status}"
        if record.jobs:
            summary += f" ({len(record.jobs)} job(s), {reused} reused)"
        lines = [summary, f"pikaci: run bundle: {bundle}"]
        for job in record.jobs:
            if job.message:
                lines.append(f"pikaci: {job.id}: {job.message}")
        if record.message and (record.status == RUN_FAILED or not record.jobs):
            lines.append(f"pikaci: {record.message}")
        self.stderr.write("".join(line + "\n" for line in lines))
        self.flush()
