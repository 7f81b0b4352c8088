"""`prepared-outputs.json` as builds realize payloads and jobs consume them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from pikaci.fulfill.consumer import fulfil
from pikaci.fulfill.settings import FulfillSettings
from pikaci.model import Exposure, PreparedOutputsRecord, RealizedPreparedOutputRecord
from pikaci.payloads.staged import StagedOutput
from pikaci.runtimes.base import HostLog
from pikaci.store import (
    PREPARED_OUTPUTS_FILE,
    RunWriter,
    atomic_symlink,
    file_lock,
    read_json_object,
)


def record_realized(writer: RunWriter, values: Dict[str, Any], consumer: FulfillSettings) -> None:
    """A build realized an output: record it, before any lane consumes it."""
    output = StagedOutput.from_values(values)

    def change(record: PreparedOutputsRecord) -> None:
        if all(item.node_id != output.node_id for item in record.outputs):
            record.upsert(output.to_record(consumer.consumer))

    writer.update_prepared_outputs(change)


def record_consumed(
    writer: RunWriter,
    job_dir: Path,
    outputs: Sequence[StagedOutput],
    exposed: bool,
    consumer: FulfillSettings,
    log: Callable[[str], None] = lambda line: None,
) -> None:
    """Upsert the outputs a job consumes into prepared-outputs.json.

    An executed job gets its host symlink exposures (`staged-linux-rust/workspace-<role>`),
    made by pikaci or, with the `fulfill_request_cli_v1` consumer, by the fulfillment helper
    (for every exposure of the output requested so far); a reused one only requests them: its
    evidence lives in the run that executed it.
    """
    for output in outputs:
        if output.on_builder:
            continue  # mounted on the builder; nothing of it is exposed here
        link = job_dir / "staged-linux-rust" / f"workspace-{output.role}"
        exposure = Exposure(path=str(link))
        if not exposed:
            _request(writer, output, exposure, consumer)
        elif consumer.fulfills:
            # one helper run at a time per output: lanes consuming it may start together
            with file_lock(writer.run_dir / f".fulfill-{output.node_id}.lock"):
                _fulfilled(writer, output, exposure, consumer, log)
        else:
            atomic_symlink(link, output.store_path)
            _request(writer, output, exposure, consumer, exposed=True)


def _request(
    writer: RunWriter,
    output: StagedOutput,
    exposure: Exposure,
    consumer: FulfillSettings,
    exposed: bool = False,
) -> None:
    def change(record: PreparedOutputsRecord) -> None:
        item = _item(record, output, consumer)
        if exposure not in item.requested_exposures:
            item.requested_exposures.append(exposure)
        if exposed and exposure not in item.exposures:
            item.exposures.append(exposure)
        record.upsert(item)

    writer.update_prepared_outputs(change)


def _fulfilled(
    writer: RunWriter,
    output: StagedOutput,
    exposure: Exposure,
    consumer: FulfillSettings,
    log: Callable[[str], None],
) -> None:
    current = PreparedOutputsRecord.from_dict(
        read_json_object(writer.run_dir / PREPARED_OUTPUTS_FILE), "prepared-outputs.json"
    )
    requested = list(_item(current, output, consumer).requested_exposures)
    if exposure not in requested:
        requested.append(exposure)
    done = fulfil(consumer, writer.run_dir, output, requested, log)

    def change(record: PreparedOutputsRecord) -> None:
        item = _item(record, output, consumer)
        item.requested_exposures = list(requested)
        item.exposures = list(done.exposures)
        item.consumer_request_path = done.request_path
        item.consumer_result_path = done.result_path
        item.consumer_launch_request_path = done.launch_request_path
        item.consumer_transport_request_path = done.transport_request_path
        record.upsert(item)

    writer.update_prepared_outputs(change)


def _item(
    record: PreparedOutputsRecord, output: StagedOutput, consumer: FulfillSettings
) -> RealizedPreparedOutputRecord:
    for item in record.outputs:
        if item.node_id == output.node_id:
            return item
    return output.to_record(consumer.consumer)


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
