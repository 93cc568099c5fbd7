"""Publishing events to their partitions (writer and query both announce through this)."""

from __future__ import annotations

from collections import defaultdict

from . import envelope, topology
from .amqp import Broker
from .envelope import Event, Events


def by_partition(events: list[Event], partitions: int) -> dict[int, list[Event]]:
    grouped: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        conversation_id = getattr(event, "conversation_id", None)
        p = topology.partition(conversation_id, partitions) if conversation_id is not None else 0
        grouped[p].append(event)
    return grouped


async def publish_events(broker: Broker, events: list[Event], partitions: int) -> None:
    """One confirmed publish per partition touched; raises amqp.Unavailable if any fails."""
    for p, items in sorted(by_partition(events, partitions).items()):
        await broker.publish(topology.EVENTS, str(p), envelope.encode(Events(items=items)))
