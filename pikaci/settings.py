"""Invocation settings from flags and the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from pikaci.session import ENV_OUTPUT, OUTPUT_MODES, Settings
from pikaci.store import resolve_state_root
from pikaci.transport import DEFAULT_REMOTE_WORK_DIR, Builder


def settings_from_environment(
    source_root: Path,
    state_root_flag: Optional[str] = None,
    output: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Settings:
    """`--state-root` > `PIKACI_STATE_ROOT` > `<source root>/.pikaci`; output likewise.

    Relative state roots are taken from the source root, where doit and pikaci both run.
    """
    env = os.environ if environ is None else environ
    state_root = resolve_state_root(state_root_flag, env, cwd=source_root)
    mode = output or env.get(ENV_OUTPUT, "").strip() or "human"
    if mode not in OUTPUT_MODES:
        source = "--output" if output else ENV_OUTPUT
        raise ValueError(f"{source}: invalid output mode {mode!r} (expected human, json or jsonl)")
    return Settings(
        source_root=source_root,
        state_root=state_root,
        output=mode,
        builder=builder_from_environment(env),
    )


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
