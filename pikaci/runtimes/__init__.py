"""One module per runtime; this table is the only place that maps a lane's execution to one."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

from pikaci.catalog import (
    LOCAL_BUBBLEWRAP,
    LOCAL_HOST_PROCESS,
    LOCAL_INCUS,
    REMOTE_SSH_BUBBLEWRAP,
    REMOTE_SSH_HOST_PROCESS,
    REMOTE_SSH_INCUS,
    SUPPORTED_EXECUTIONS,
    Execution,
)
from pikaci.runtimes.base import LaneRuntime
from pikaci.runtimes.host import HostProcessRuntime
from pikaci.runtimes.incus_runtime import IncusRuntime
from pikaci.runtimes.remote_host import RemoteHostProcessRuntime
from pikaci.runtimes.remote_sandbox import RemoteSandboxRuntime
from pikaci.runtimes.sandbox import BubblewrapRuntime

RUNTIME_FACTORIES: Dict[Tuple[str, str], Callable[[], LaneRuntime]] = {
    LOCAL_HOST_PROCESS: HostProcessRuntime,
    LOCAL_BUBBLEWRAP: BubblewrapRuntime,
    REMOTE_SSH_HOST_PROCESS: RemoteHostProcessRuntime,
    REMOTE_SSH_BUBBLEWRAP: RemoteSandboxRuntime,
    LOCAL_INCUS: lambda: IncusRuntime(remote=False),
    REMOTE_SSH_INCUS: lambda: IncusRuntime(remote=True),
}

assert set(RUNTIME_FACTORIES) == set(SUPPORTED_EXECUTIONS), "catalog and runtimes disagree"


def runtime_for(execution: Execution) -> LaneRuntime:
    return RUNTIME_FACTORIES[execution.pair]()
