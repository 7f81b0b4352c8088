"""A realized staged payload as a job consumes it, and how it is recorded in
`prepared-outputs.json` (residency and consumer vocabularies of the records)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pikaci.model import (
    RealizedPreparedOutputRecord,
)
from pikaci.payloads.manifest import PayloadManifest, parse_manifest
from pikaci.vocabulary import CONSUMER_BUILDER_MOUNTS, CONSUMER_REMOTE_EXPOSURE

RESIDENCY_LOCAL = "local_authoritative"  # built here (and, in `copy` mode, copied over)
RESIDENCY_BUILDER = "remote_authoritative_staged_linux"  # built on the builder, only there
CONSUMER_LOCAL = "host_local_symlink_mounts_v1"


@dataclass(frozen=True)
class StagedOutput:
    """A realized staged payload a job consumes (from its build task's saved values)."""

    role: str  # deps | build
    node_id: str
    installable: str
    output_name: str
    store_path: Path
    manifest: PayloadManifest
    residency: str = RESIDENCY_LOCAL
    on_builder: bool = False  # lanes read it from the builder's store

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> StagedOutput:
        label = f"{values['node_id']} ({values['store_path']})"
        return cls(
            role=str(values["role"]),
            node_id=str(values["node_id"]),
            installable=str(values["installable"]),
            output_name=str(values["output_name"]),
            store_path=Path(values["store_path"]),
            manifest=parse_manifest(values["manifest"], label),
            residency=str(values.get("residency") or RESIDENCY_LOCAL),
            on_builder=bool(values.get("on_builder")),
        )

    @property
    def label(self) -> str:
        return f"{self.node_id} ({self.store_path})"

    def to_record(self, local_consumer: str = CONSUMER_LOCAL) -> RealizedPreparedOutputRecord:
        """`local_consumer`: the consumer of outputs realized here (the run's choice)."""
        return RealizedPreparedOutputRecord(
            node_id=self.node_id,
            installable=self.installable,
            output_name=self.output_name,
            protocol="nix_store_path_v1",
            residency=self.residency,
            # mounted from the builder's store: the reference's nearest consumer, and what
            # really happens in pikaci's own field (pikaci.vocabulary)
            consumer=CONSUMER_REMOTE_EXPOSURE if self.on_builder else local_consumer,
            pikaci_consumer=CONSUMER_BUILDER_MOUNTS if self.on_builder else None,
            realized_path=str(self.store_path),
            payload=self.manifest.to_dict(),
        )
