"""Invocation settings from flags and the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from pikaci.session import ENV_OUTPUT, OUTPUT_MODES, Settings
from pikaci.store import resolve_state_root


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
    return Settings(source_root=source_root, state_root=state_root, output=mode)
