"""`prepared-outputs.json` as builds realize payloads and jobs consume them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from pikaci.model import Exposure, PreparedOutputsRecord
from pikaci.payloads.staged import StagedOutput
from pikaci.runtimes.base import HostLog
from pikaci.store import RunWriter


def record_realized(writer: RunWriter, values: Dict[str, Any]) -> None:
    """A build realized an output: record it, before any lane consumes it."""
    output = StagedOutput.from_values(values)

    def change(record: PreparedOutputsRecord) -> None:
        if all(item.node_id != output.node_id for item in record.outputs):
            record.upsert(output.to_record())

    writer.update_prepared_outputs(change)


def record_consumed(
    writer: RunWriter, job_dir: Path, outputs: Sequence[StagedOutput], exposed: bool
) -> None:
    """Upsert the outputs a job consumes into prepared-outputs.json.

    An executed job gets its host symlink exposures (`staged-linux-rust/workspace-<role>`);
    a reused one only requests them: its evidence lives in the run that executed it.
    """
    requested = []
    for output in outputs:
        if output.on_builder:
            continue  # mounted on the builder; nothing of it is exposed here
        link = job_dir / "staged-linux-rust" / f"workspace-{output.role}"
        if exposed:
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.tmp")
            if tmp.is_symlink():
                tmp.unlink()
            tmp.symlink_to(output.store_path)
            tmp.replace(link)
        requested.append((output, Exposure(path=str(link))))

    def change(record: PreparedOutputsRecord) -> None:
        existing = {item.node_id: item for item in record.outputs}
        for output, exposure in requested:
            item = existing.get(output.node_id) or output.to_record()
            if exposure not in item.requested_exposures:
                item.requested_exposures.append(exposure)
            if exposed and exposure not in item.exposures:
                item.exposures.append(exposure)
            record.upsert(item)

    writer.update_prepared_outputs(change)


class PayloadLog:
    """A build's or upload's lines into the host log of each consuming job and the console;
    `quiet` writes the host logs alone (the remote scripts a step runs: the console keeps one
    line per step)."""

    def __init__(
        self, logs: Sequence[HostLog], label: str, console: Optional[Callable[[str], None]]
    ) -> None:
        self._logs = list(logs)
        self._label = label
        self._console = console

    def __call__(self, line: str) -> None:
        self.quiet(line)
        if self._console is not None:
            self._console(f"[{self._label}] {line}")

    def quiet(self, line: str) -> None:
        for log in self._logs:
            log.note(f"{self._label}: {line}")


def payload_sink(
    logs: Sequence[HostLog], label: str, console: Optional[Callable[[str], None]]
) -> PayloadLog:
    return PayloadLog(logs, label, console)
