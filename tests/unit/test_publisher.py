"""The gateway's command publisher: memory stays bounded while the broker cannot take commands,
typing takes its own transient path, and under load flushes linger to carry more commands."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gateway.publisher import CommandPublisher, Pace, linger
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


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(0, 0.0), (150, 0.0), (200, 0.0), (600, 0.015), (1000, 0.03), (5000, 0.03)],
)
def test_the_linger_is_none_at_low_rates_and_grows_to_its_most_under_load(rate, expected):
    assert linger(rate, 0.03) == pytest.approx(expected)


def test_pace_measures_the_rate_per_window_and_holds_a_flush_only_under_load():
    pace = Pace(0.03)
    assert pace.hold(0.0) == 0.0  # nothing flushed yet
    t = 0.0
    for _ in range(60):  # 1,200 commands a second, 20 each 1/60 s
        pace.flushed(t, 20)
        t += 1 / 60
    assert pace.rate == pytest.approx(1200, rel=0.05)
    assert pace.hold(pace.last + 0.001) == pytest.approx(0.029)
    assert pace.hold(pace.last + 0.05) == 0.0  # the linger has passed since the last flush began
    assert pace.hold(t + 2.0) == 0.0  # after a pause the first flush goes at once
    pace.flushed(t + 2.0, 1)
    pace.flushed(t + 2.6, 1)  # and the next window's rate is the quiet one: no linger
    assert pace.rate < 200 and pace.hold(pace.last) == 0.0
    assert Pace(0.0).hold(0.0) == 0.0


async def _sent_at(rate: float, seconds: float, linger_s: float) -> list[tuple[str, str, list[envelope.Command], bool]]:
    """Submit reads at ``rate`` a second for ``seconds`` (a tick every 10 ms); what the broker got."""
    broker = RecordingBroker()
    publisher = CommandPublisher(broker, partitions=1, linger=linger_s)  # type: ignore[arg-type]
    publisher.start()
    per_tick = rate / 100
    cid = uuid.uuid4()
    owed = 0.0
    try:
        for tick in range(int(seconds * 100)):
            owed += per_tick
            while owed >= 1:
                owed -= 1
                publisher.submit(ReadMessages(user_id=f"u{tick}", conversation_id=cid, origin=Origin("g", "c")))
            await asyncio.sleep(0.01)
    finally:
        await publisher.close()
    return broker.published


async def test_under_load_flushes_carry_many_commands_in_order_and_at_low_rates_each_goes_alone():
    busy = await _sent_at(2000, 1.5, 0.1)
    eager = await _sent_at(2000, 1.5, 0.0)
    users = [c.user_id for p in busy for c in p[2]]
    assert users == [c.user_id for p in eager for c in p[2]]  # every command once, in the order submitted
    assert len(users) == 3000 and len(busy) <= len(eager) / 2
    late = [len(p[2]) for p in busy[-5:-1]]  # after the first window: 0.1 s apart, ~200 each (the last: a rest)
    assert min(late) >= 100
    quiet = await _sent_at(50, 1.0, 0.1)  # 50 a second: below the linger's threshold
    assert sum(len(p[2]) for p in quiet) == 50 and len(quiet) >= 40  # one flush each, held for none
