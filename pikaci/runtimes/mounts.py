"""Where each payload mount of a staged output comes from: this machine's store, or the
builder's (a chroot store's files live under its physical path)."""

from __future__ import annotations

import posixpath
from typing import Callable, List, Tuple

from pikaci.builder.transport import Builder
from pikaci.payloads.builder_nix import physical_path
from pikaci.payloads.manifest import ManifestError, PayloadMount, mount_sources
from pikaci.payloads.staged import StagedOutput
from pikaci.runtimes.guest_layout import SandboxError


def local_mount_sources(output: StagedOutput) -> List[Tuple[PayloadMount, str]]:
    """Each mount's source resolved inside the output's store path on this machine."""
    try:
        sources = mount_sources(output.store_path, output.manifest, output.label)
    except ManifestError as exc:
        raise SandboxError(str(exc)) from None
    return [(item.mount, str(item.source)) for item in sources]


def builder_mount_sources(
    builder: Builder,
) -> Callable[[StagedOutput], List[Tuple[PayloadMount, str]]]:
    """Each mount's source in the builder's store (the build step checked it exists there)."""

    def sources(output: StagedOutput) -> List[Tuple[PayloadMount, str]]:
        root = physical_path(builder, str(output.store_path))
        return [
            (
                mount,
                root
                if mount.relative_path in ("", ".")
                else posixpath.normpath(f"{root}/{mount.relative_path}"),
            )
            for mount in output.manifest.mounts
        ]

    return sources
