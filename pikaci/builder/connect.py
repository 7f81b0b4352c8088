"""The builder's shared SSH connection: one ControlMaster socket directory per user, reused by
every task, lane and run; closing them all (`pikaci builder reset`)."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, List

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


def close_masters(ssh_program: str = "ssh") -> List[str]:
    """End every shared connection of this user (`ssh -O exit` on each socket of the control
    directory): the next command logs in afresh, with the builder's current groups and the
    current SSH configuration. Returns the sockets whose master answered."""
    closed = []
    directory = control_dir()
    for entry in sorted(directory.iterdir()):
        try:
            if not stat.S_ISSOCK(entry.lstat().st_mode):
                continue
        except OSError:
            continue  # gone meanwhile
        done = subprocess.run(
            [ssh_program, "-o", f"ControlPath={entry}", "-O", "exit", "pikaci-builder"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=15,
            check=False,
        )
        if done.returncode == 0:
            closed.append(entry.name)
        else:
            entry.unlink(missing_ok=True)  # no master behind it: a socket left by a dead one
    return closed
