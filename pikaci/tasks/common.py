"""What the modules of the doit layer share: the task dict type, the builder errors a task
turns into a one-line failure, and a target's snapshot filter for this invocation."""

from __future__ import annotations

from typing import Any, Dict

from pikaci.builder.layout import RemoteError
from pikaci.builder.transport import RemoteCommandError, TransportError
from pikaci.catalog import Target
from pikaci.payloads.builder_nix import BuilderNixError
from pikaci.payloads.manifest import ManifestError
from pikaci.plan import snapshot_filter
from pikaci.run.session import RunSession
from pikaci.snapshot import SnapshotFilter

TaskDict = Dict[str, Any]
BUILDER_ERRORS = (TransportError, RemoteCommandError, RemoteError, BuilderNixError, ManifestError)


def target_filter(session: RunSession, target: Target) -> SnapshotFilter:
    settings = session.settings
    return snapshot_filter(target, settings.source_root.resolve(), settings.state_root.resolve())
