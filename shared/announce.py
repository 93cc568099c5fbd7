"""Publishing events to their partitions (writer and query both announce through this)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Protocol

from . import envelope, topology
from .envelope import Event, Events


class Publisher(Protocol):
    """What a stage needs of the broker to announce its output (``amqp.Broker``, or a test's fake)."""

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        mandatory: bool = ...,
        timeout: float = ...,
        headers: dict[str, Any] | None = ...,
        persistent: bool = ...,
    ) -> None: ...


def by_partition(events: list[Event], partitions: int) -> dict[int, list[Event]]:
    grouped: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        conversation_id = getattr(event, "conversation_id", None)
        p = topology.partition(conversation_id, partitions) if conversation_id is not None else 0
        grouped[p].append(event)
    return grouped


async def publish_events(broker: Publisher, events: list[Event], partitions: int) -> None:
    """One confirmed publish per partition touched, all at once (each partition's order lives in
    its one message; waiting for the confirms one after another cost a round trip per partition).
    Raises amqp.Unavailable if any fails; the caller retries and the consumers are idempotent."""
    results = await asyncio.gather(
        *(
            broker.publish(topology.EVENTS, str(p), envelope.encode(Events(items=items)))
            for p, items in by_partition(events, partitions).items()
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
