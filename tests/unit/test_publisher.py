"""The gateway's command publisher: memory stays bounded while the broker cannot take commands, and
typing takes its own transient path."""

from __future__ import annotations

import asyncio
import uuid

from gateway.publisher import CommandPublisher
from shared import envelope, topology
from shared.amqp import Unavailable
from shared.envelope import Origin, ReadMessages, StartTyping


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


class RecordingBroker:
    """Records each publish; refuses those to ``refuse`` (an exchange or routing key)."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.published: list[tuple[str, str, list[envelope.Command], bool]] = []

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, persistent: bool = True) -> None:
        if self.refuse in (exchange, routing_key):
            raise Unavailable("refused")
        self.published.append((exchange, routing_key, envelope.decode(envelope.Commands, body).items, persistent))


def _typing(cid: uuid.UUID) -> StartTyping:
    return StartTyping(user_id="u", conversation_id=cid, origin=Origin("g", "c"))


async def _flush(broker: RecordingBroker, commands: list[tuple[envelope.Command, object]]) -> None:
    publisher = CommandPublisher(broker, partitions=4)  # type: ignore[arg-type]
    publisher.start()
    try:
        for command, on_fail in commands:
            assert publisher.submit(command, on_fail)  # type: ignore[arg-type]
    finally:
        await publisher.close()


async def test_typing_goes_transient_to_its_own_queue_and_commands_to_their_partitions():
    cids = [uuid.uuid4() for _ in range(3)]
    reads = [ReadMessages(user_id="u", conversation_id=c, origin=Origin("g", "c")) for c in cids]
    typing = [_typing(c) for c in cids]
    broker = RecordingBroker()
    await _flush(broker, [(c, None) for pair in zip(reads, typing) for c in pair])
    to_typing = [p for p in broker.published if p[0] == topology.TYPING]
    assert [(key, items, persistent) for _, key, items, persistent in to_typing] == [("", typing, False)]
    partitioned = [p for p in broker.published if p[0] == topology.COMMANDS]
    assert sorted(c.conversation_id for p in partitioned for c in p[2]) == sorted(cids)  # every read, no typing
    assert all(p[3] and p[1] == str(topology.partition(p[2][0].conversation_id, 4)) for p in partitioned)


async def test_typing_the_broker_refuses_is_dropped_quietly_and_commands_still_go():
    broker = RecordingBroker(refuse=topology.TYPING)
    failures: list[str] = []
    read = ReadMessages(user_id="u", conversation_id=uuid.uuid4(), origin=Origin("g", "c"))
    await _flush(broker, [(_typing(uuid.uuid4()), failures.append), (read, failures.append)])
    assert [p[2] for p in broker.published] == [[read]]
    assert failures == []  # nobody is told "unavailable" for typing
