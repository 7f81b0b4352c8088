"""The builder's shared SSH connection: one ControlMaster socket directory per user, reused by
every task, lane and run."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from pikaci.builder.transport import Builder, Transport, TransportError


def connect(builder: Builder, log: Callable[[str], None]) -> Transport:
    """A transport over the builder's shared connection. Never closed by callers: the master
    outlives a task (ControlPersist), so later tasks, lanes and runs reuse it, and closing it
    would cut the sessions of other processes riding on it."""
    return Transport(builder, control_dir(), log)


def control_dir() -> Path:
    """Where ControlMaster sockets live: short (unix socket paths stop near 108 bytes), private,
    and shared by every run of this user so one connection serves them all."""
    path = Path(tempfile.gettempdir()) / f"pikaci-ssh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise TransportError(f"{path} must be a directory only you can use (mode 700)")
    return path
