"""Whether the run's prepared-output consumer can serve the lanes it plans (reference §3.4),
decided before the run opens: a consumer that cannot expose a lane's payloads must stop the
run with one line, not leave the lane without them."""

from __future__ import annotations

from typing import Sequence, Tuple

from pikaci.catalog import REALIZE_LOCAL, Lane, Target
from pikaci.fulfill.settings import (
    CONSUMER_REMOTE_REQUEST,
    ENV_CONSUMER,
    ENV_SUBPROCESS,
    FulfillSettings,
)


class ConsumerError(ValueError):
    """The consumer cannot serve the planned lanes; one line."""


def check_consumer(settings: FulfillSettings, planned: Sequence[Tuple[Target, Lane]]) -> None:
    staged = [target for target, _ in planned if target.payloads is not None]
    if settings.consumer == CONSUMER_REMOTE_REQUEST and staged:
        raise ConsumerError(
            f"{ENV_CONSUMER}=remote_request_v1 is a prototype that cannot serve staged lanes "
            f"(target `{staged[0].id}` has payloads)"
        )
    if not settings.fulfills:
        return
    if settings.mode is not None and not staged:
        raise ConsumerError(f"{ENV_SUBPROCESS} needs at least one lane of a staged target")
    on_builder = [target for target in staged if target.realization != REALIZE_LOCAL]
    if on_builder:
        raise ConsumerError(
            f"{ENV_CONSUMER}=fulfill_request_cli_v1: target `{on_builder[0].id}` reads its "
            "payloads on a builder, which this version bind-mounts from the builder's store "
            "(the SSH launcher transport is not supported); leave the consumer unset"
        )
