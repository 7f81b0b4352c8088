"""Invocation settings from flags and the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from pikaci.session import ENV_OUTPUT, OUTPUT_MODES, Settings
from pikaci.store import DEFAULT_STATE_DIR, ENV_STATE_ROOT


def settings_from_environment(
    source_root: Path,
    state_root_flag: Optional[str] = None,
    output: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Settings:
    """`--state-root` > `PIKACI_STATE_ROOT` > `<source root>/.pikaci`; output likewise."""
    env = os.environ if environ is None else environ
    chosen = state_root_flag or env.get(ENV_STATE_ROOT, "").strip()
    if chosen:
        state_root = (Path.cwd() / Path(chosen).expanduser()).absolute()
    else:
        state_root = source_root / DEFAULT_STATE_DIR
    mode = output or env.get(ENV_OUTPUT, "").strip() or "human"
    if mode not in OUTPUT_MODES:
        source = "--output" if output else ENV_OUTPUT
        raise ValueError(f"{source}: invalid output mode {mode!r} (expected human, json or jsonl)")
    return Settings(source_root=source_root, state_root=state_root, output=mode)
