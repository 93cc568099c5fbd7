"""The gateway's command publisher keeps memory bounded while the broker cannot take commands."""

from __future__ import annotations

import asyncio
import uuid

from gateway.publisher import CommandPublisher
from shared.envelope import Origin, ReadMessages


class BlockedBroker:
    """A broker that blocks publishers (RabbitMQ's memory alarm): publishes never confirm."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.published = 0

    async def publish(self, *args: object, **kw: object) -> None:
        await self.release.wait()
        self.published += 1


async def test_pending_commands_are_bounded_and_the_excess_is_refused():
    broker = BlockedBroker()
    publisher = CommandPublisher(broker, partitions=4, max_pending=100)  # type: ignore[arg-type]
    publisher.start()
    command = ReadMessages(user_id="u", conversation_id=uuid.uuid4(), origin=Origin("g", "c"))
    try:
        assert publisher.submit(command)
        await asyncio.sleep(0.01)  # the first flush is now stuck waiting for its confirm
        accepted = [publisher.submit(command) for _ in range(150)]
        assert accepted.count(True) == 100 and accepted[-1] is False
        broker.release.set()
        await asyncio.sleep(0.05)
        assert publisher.submit(command)  # once the broker takes them, there is room again
    finally:
        broker.release.set()
        await publisher.close()
