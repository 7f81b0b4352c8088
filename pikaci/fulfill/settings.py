"""Which consumer exposes a run's realized payloads, and how it is invoked (reference §3.4).

    PIKACI_PREPARED_OUTPUT_CONSUMER              unset: host_local_symlink_mounts_v1 (pikaci
                                                 links the payloads itself); remote_request_v1
                                                 (a prototype: no staged lanes);
                                                 fulfill_request_cli_v1 (the helper does it)
    PIKACI_PRE_MERGE_PIKA_RUST_SUBPROCESS_FULFILL  1/true/yes (0/false/no): fulfill_request_cli_v1
                                                 in mode pre_merge_pika_rust_subprocess_...;
                                                 not together with an explicit consumer
    PIKACI_PREPARED_OUTPUT_FULFILL_INVOCATION    direct_helper_exec_v1 (default) |
                                                 external_wrapper_command_v1
    PIKACI_PREPARED_OUTPUT_FULFILL_LAUNCHER_TRANSPORT  (external wrapper only)
                                                 direct_launcher_exec_v1 (default) |
                                                 command_transport_v1 (needs ..._TRANSPORT_BINARY)
                                                 | ssh_launcher_transport_v1 (not in this version)
    PIKACI_PREPARED_OUTPUT_FULFILL_BINARY        the helper program
    PIKACI_PREPARED_OUTPUT_FULFILL_LAUNCHER_BINARY  the launcher (legacy: ..._WRAPPER_BINARY)

The helper and launcher default to the programs installed next to the running interpreter
(`pikaci-fulfill-prepared-output`, `pikaci-launch-fulfill-prepared-output`). The choice is
recorded in run.json's `prepared_output_*` fields, and a rerun uses the recorded one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

CONSUMER_HOST_LINKS = "host_local_symlink_mounts_v1"
CONSUMER_REMOTE_REQUEST = "remote_exposure_request_v1"
CONSUMER_FULFILL = "fulfill_request_cli_v1"
MODE_SUBPROCESS = "pre_merge_pika_rust_subprocess_fulfillment_v1"
INVOKE_HELPER = "direct_helper_exec_v1"
INVOKE_WRAPPER = "external_wrapper_command_v1"
TRANSPORT_DIRECT = "direct_launcher_exec_v1"
TRANSPORT_COMMAND = "command_transport_v1"
TRANSPORT_SSH = "ssh_launcher_transport_v1"

ENV_CONSUMER = "PIKACI_PREPARED_OUTPUT_CONSUMER"
ENV_SUBPROCESS = "PIKACI_PRE_MERGE_PIKA_RUST_SUBPROCESS_FULFILL"
ENV_INVOCATION = "PIKACI_PREPARED_OUTPUT_FULFILL_INVOCATION"
ENV_TRANSPORT = "PIKACI_PREPARED_OUTPUT_FULFILL_LAUNCHER_TRANSPORT"
ENV_TRANSPORT_BINARY = "PIKACI_PREPARED_OUTPUT_FULFILL_TRANSPORT_BINARY"
ENV_HELPER = "PIKACI_PREPARED_OUTPUT_FULFILL_BINARY"
ENV_LAUNCHER = "PIKACI_PREPARED_OUTPUT_FULFILL_LAUNCHER_BINARY"
ENV_LAUNCHER_LEGACY = "PIKACI_PREPARED_OUTPUT_FULFILL_WRAPPER_BINARY"
HELPER_PROGRAM = "pikaci-fulfill-prepared-output"
LAUNCHER_PROGRAM = "pikaci-launch-fulfill-prepared-output"

_CONSUMER_VALUES = {
    "remote_request_v1": CONSUMER_REMOTE_REQUEST,
    CONSUMER_FULFILL: CONSUMER_FULFILL,
}
_TRUE = ("1", "true", "TRUE", "yes", "YES")
_FALSE = ("0", "false", "FALSE", "no", "NO")


@dataclass(frozen=True)
class FulfillSettings:
    consumer: str = CONSUMER_HOST_LINKS
    mode: Optional[str] = None
    invocation: Optional[str] = None  # fulfill consumer only
    transport: Optional[str] = None  # external wrapper only
    helper_program: Optional[str] = None
    launcher_program: Optional[str] = None
    transport_program: Optional[str] = None

    @property
    def fulfills(self) -> bool:
        return self.consumer == CONSUMER_FULFILL

    def record_fields(self) -> Dict[str, Optional[str]]:
        """run.json's `prepared_output_*` values for this choice."""
        return {
            "prepared_output_consumer": self.consumer
            if self.consumer != CONSUMER_HOST_LINKS
            else None,
            "prepared_output_mode": self.mode,
            "prepared_output_invocation_mode": self.invocation,
            "prepared_output_invocation_wrapper_program": self.launcher_program
            if self.invocation == INVOKE_WRAPPER
            else None,
            "prepared_output_launcher_transport_mode": self.transport,
            "prepared_output_launcher_transport_program": self.transport_program,
        }


def _installed(program: str) -> str:
    """A console script of this installation (next to the running interpreter)."""
    return str(Path(sys.executable).parent / program)


def _choice(env: Mapping[str, str], name: str, allowed: Tuple[str, ...], default: str) -> str:
    value = env.get(name, "").strip() or default
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def fulfill_settings_from_environment(env: Mapping[str, str]) -> FulfillSettings:
    """The consumer settings; ValueError naming the variable at fault."""
    raw_consumer = env.get(ENV_CONSUMER, "").strip()
    raw_mode = env.get(ENV_SUBPROCESS, "").strip()
    if raw_mode and raw_mode not in _TRUE + _FALSE:
        raise ValueError(f"{ENV_SUBPROCESS}: expected 1/true/yes or 0/false/no, got {raw_mode!r}")
    forced = raw_mode in _TRUE
    if forced and raw_consumer:
        raise ValueError(f"{ENV_SUBPROCESS} cannot be combined with {ENV_CONSUMER}")
    if raw_consumer and raw_consumer not in _CONSUMER_VALUES:
        raise ValueError(
            f"{ENV_CONSUMER}: expected remote_request_v1 or {CONSUMER_FULFILL}, "
            f"got {raw_consumer!r}"
        )
    consumer = (
        CONSUMER_FULFILL if forced else _CONSUMER_VALUES.get(raw_consumer, CONSUMER_HOST_LINKS)
    )
    if consumer != CONSUMER_FULFILL:
        return FulfillSettings(consumer=consumer)
    invocation = _choice(env, ENV_INVOCATION, (INVOKE_HELPER, INVOKE_WRAPPER), INVOKE_HELPER)
    helper = env.get(ENV_HELPER, "").strip() or _installed(HELPER_PROGRAM)
    if invocation == INVOKE_HELPER:
        return FulfillSettings(
            consumer, MODE_SUBPROCESS if forced else None, invocation, helper_program=helper
        )
    transport = _choice(
        env, ENV_TRANSPORT, (TRANSPORT_DIRECT, TRANSPORT_COMMAND, TRANSPORT_SSH), TRANSPORT_DIRECT
    )
    if transport == TRANSPORT_SSH:
        raise ValueError(
            f"{ENV_TRANSPORT}={TRANSPORT_SSH} is not supported by this version of pikaci "
            f"(payloads on a builder are bind-mounted from its store: leave {ENV_CONSUMER} unset)"
        )
    launcher = (
        env.get(ENV_LAUNCHER, "").strip()
        or env.get(ENV_LAUNCHER_LEGACY, "").strip()
        or _installed(LAUNCHER_PROGRAM)
    )
    transport_program = None
    if transport == TRANSPORT_COMMAND:
        transport_program = env.get(ENV_TRANSPORT_BINARY, "").strip()
        if not transport_program:
            raise ValueError(f"{ENV_TRANSPORT}={TRANSPORT_COMMAND} needs {ENV_TRANSPORT_BINARY}")
    return FulfillSettings(
        consumer,
        MODE_SUBPROCESS if forced else None,
        invocation,
        transport,
        helper,
        launcher,
        transport_program,
    )


def fulfill_settings_of_run(
    fields: Mapping[str, Optional[str]], env: Mapping[str, str]
) -> FulfillSettings:
    """A rerun's settings: the old run's recorded choice (programs from this installation when
    the record does not name them)."""
    consumer = fields.get("prepared_output_consumer") or CONSUMER_HOST_LINKS
    if consumer != CONSUMER_FULFILL:
        return FulfillSettings(consumer=consumer)
    invocation = fields.get("prepared_output_invocation_mode") or INVOKE_HELPER
    return FulfillSettings(
        consumer=consumer,
        mode=fields.get("prepared_output_mode"),
        invocation=invocation,
        transport=fields.get("prepared_output_launcher_transport_mode"),
        helper_program=env.get(ENV_HELPER, "").strip() or _installed(HELPER_PROGRAM),
        launcher_program=fields.get("prepared_output_invocation_wrapper_program"),
        transport_program=fields.get("prepared_output_launcher_transport_program"),
    )
