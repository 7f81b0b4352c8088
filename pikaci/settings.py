"""Invocation settings from flags and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Tuple

from pikaci.builder.config import builder_from_environment
from pikaci.builder.transport import Builder
from pikaci.fulfill.settings import FulfillSettings, fulfill_settings_from_environment
from pikaci.model import RunRecord
from pikaci.store import resolve_state_root

OUTPUT_MODES = ("human", "json", "jsonl")
ENV_OUTPUT = "PIKACI_OUTPUT"
# lanes (and other ready tasks) of a run that doit runs at once, in threads, unless `-n` says
# otherwise; upstream's setting and default
ENV_MAX_CONCURRENT = "PIKACI_MAX_CONCURRENT_EXECUTES"
DEFAULT_MAX_CONCURRENT = 2
MAX_CONCURRENT_LIMIT = 64
# the reference refuses to start while this retired switch is set, so that a CI that still
# sets it learns that it no longer chooses anything
ENV_RETIRED_INCUS_LANES = "PIKACI_REMOTE_LINUX_VM_INCUS_LANES"
RETIRED_INCUS_LANES_MESSAGE = (
    f"{ENV_RETIRED_INCUS_LANES} is no longer supported: unset it (upstream's replacement was "
    "PIKACI_REMOTE_LINUX_VM_BACKEND=incus|auto; in pikaci a lane's runtime is declared in the "
    'catalog: Execution(runtime="incus"))'
)


@dataclass
class Settings:
    source_root: Path
    state_root: Path
    output: str = "human"
    rerun: Optional[RunRecord] = None  # the run being re-executed, with its snapshot
    dep_file: Optional[Path] = None  # defaults to the state root's doit.sqlite3
    builder: Optional[Builder] = None  # where `remote_ssh` lanes run
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    # stdout holds only the result lines (`pikaci run`/`rerun` in human mode, as the reference's
    # CLI): doit's console and the lanes' output go to stderr
    results_only_stdout: bool = False
    # the paths a forge plan (`ci:branch`) selected its lanes by: the run's `changed_files`
    changed_files: Tuple[str, ...] = ()
    # who exposes realized payloads to the lanes, and how (pikaci.fulfill.settings)
    fulfill: FulfillSettings = field(default_factory=FulfillSettings)

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_MODES:
            raise ValueError(
                f"invalid output mode {self.output!r} (expected one of {', '.join(OUTPUT_MODES)})"
            )


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
    if env.get(ENV_RETIRED_INCUS_LANES, "").strip():
        raise ValueError(RETIRED_INCUS_LANES_MESSAGE)
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
        max_concurrent=max_concurrent_from(env),
        fulfill=fulfill_settings_from_environment(env),
    )


def max_concurrent_from(env: Mapping[str, str]) -> int:
    raw = env.get(ENV_MAX_CONCURRENT, "").strip()
    if not raw:
        return DEFAULT_MAX_CONCURRENT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_CONCURRENT_LIMIT:
        raise ValueError(
            f"{ENV_MAX_CONCURRENT}: expected a whole number from 1 to {MAX_CONCURRENT_LIMIT}, "
            f"got {raw!r}"
        )
    return int(raw)
