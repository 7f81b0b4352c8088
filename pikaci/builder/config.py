"""The builder `remote_ssh` lanes use, from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pikaci.builder.transport import DEFAULT_REMOTE_WORK_DIR, Builder

ENV_BUILDER = "PIKACI_BUILDER"
ENV_BUILDER_SSH_CONFIG = "PIKACI_BUILDER_SSH_CONFIG"
ENV_BUILDER_WORK_DIR = "PIKACI_BUILDER_WORK_DIR"
ENV_BUILDER_NIX_STORE = "PIKACI_BUILDER_NIX_STORE"
DEFAULT_BUILDER = "pika-build"


def builder_from_environment(env: Mapping[str, str]) -> Builder:
    """The builder `remote_ssh` lanes use: an ssh host (or ssh_config alias), `-F`, work dir,
    and the Nix store its nix commands use."""
    config = env.get(ENV_BUILDER_SSH_CONFIG, "").strip()
    nix_store = env.get(ENV_BUILDER_NIX_STORE, "").strip()
    if nix_store and not nix_store.startswith("/"):
        raise ValueError(
            f"{ENV_BUILDER_NIX_STORE}: expected an absolute path (a chroot store) or nothing "
            f"(the builder's default store), got {nix_store!r}"
        )
    return Builder(
        host=env.get(ENV_BUILDER, "").strip() or DEFAULT_BUILDER,
        ssh_config=Path(config) if config else None,
        remote_work_dir=env.get(ENV_BUILDER_WORK_DIR, "").strip() or DEFAULT_REMOTE_WORK_DIR,
        nix_store=nix_store.rstrip("/"),
    )
