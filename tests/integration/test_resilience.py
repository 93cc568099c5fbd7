"""Crashes and restarts: kill -9 of a writer, a notifier and a gateway, RabbitMQ and Redis
restarts, a Postgres crash.

After each, every message whose echo reached its sender is stored exactly once, and every
recipient that stayed connected received it (deduplicated by messageId).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable

from ..harness import CAUGHT_UP, Service, System, WsClient


async def all_stored(system: System) -> dict[str, dict]:
    conn = await system.db()
    try:
        rows = await conn.fetch("SELECT id, conversation_id, seq, sender_id, temp_message_id FROM messages")
        return {str(r["id"]): dict(r) for r in rows}
    finally:
        await conn.close()


def echoes(client: WsClient) -> dict[str, dict]:
    """tempMessageId -> echo frame, for the messages this client sent."""
    return {
        f["tempMessageId"]: f for f in client.frames if f.get("type") == "new-message" and f["senderId"] == client.user
    }


def assert_sent_order_kept(sender: WsClient, count: int) -> None:
    """The sender's echoes, in seq order, are its messages 0..count-1 in the order it sent them
    (tempMessageIds end in ``-<i>``)."""
    mine = sorted(echoes(sender).values(), key=lambda f: f["seq"])
    assert [int(f["tempMessageId"].rsplit("-", 1)[1]) for f in mine] == list(range(count))


def received_ids(client: WsClient) -> set[str]:
    """Messages the client has: delivered on its socket, or read over REST after a 1012 reconnect."""
    return {f["messageId"] for f in client.frames if f.get("type") in ("new-message", CAUGHT_UP)}


async def check_guarantees(system: System, pairs: list[tuple[WsClient, WsClient, uuid.UUID]]) -> int:
    """Echoed => stored exactly once; stored => every connected participant received it; seq gapless."""
    rows = await all_stored(system)
    by_key = {(r["sender_id"], r["temp_message_id"]): r for r in rows.values()}
    assert len(by_key) == len(rows)  # (sender, tempMessageId) stored once
    echoed = 0
    for sender, receiver, cid in pairs:
        mine = [r for r in rows.values() if r["conversation_id"] == cid]
        assert sorted(r["seq"] for r in mine) == list(range(1, len(mine) + 1))
        for temp_id, echo in echoes(sender).items():
            row = by_key.get((sender.user, temp_id))
            assert row is not None, f"echoed {temp_id} is not stored"
            assert str(row["id"]) == echo["messageId"] and row["seq"] == echo["seq"]
            echoed += 1
        expected = {str(r["id"]) for r in mine}
        assert expected <= received_ids(receiver), f"{receiver.user} missed {len(expected - received_ids(receiver))}"
        assert expected <= received_ids(sender)
    return echoed


async def wait_until(predicate, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def pairs_of(
    system: System, n: int, tag: str, *, catch_up: bool = False
) -> list[tuple[WsClient, WsClient, uuid.UUID]]:
    out = []
    for i in range(n):
        s, r = f"{tag}-s{i}", f"{tag}-r{i}"
        cid = await system.conversation([s, r])
        sender = await system.connect(s, gateway=i % 2, catch_up=catch_up)
        out.append((sender, await system.connect(r, gateway=(i + 1) % 2, catch_up=catch_up), cid))
    return out


async def burst(pairs, per_sender: int, tag: str, pace: float = 0.0) -> None:
    async def one(sender: WsClient, cid: uuid.UUID) -> None:
        for i in range(per_sender):
            await sender.send_message(cid, f"{tag} {i}", temp_id=f"{tag}-{i}")
            if pace:
                await asyncio.sleep(pace)

    await asyncio.gather(*(one(s, cid) for s, _, cid in pairs))


async def wait_all_echoed(pairs, per_sender: int, timeout: float) -> None:
    for sender, _, _ in pairs:
        await sender.wait_for(lambda fs, s=sender: len(echoes(s)) >= per_sender or None, timeout=timeout)


async def wait_all_received(pairs, count: int, timeout: float) -> None:
    """Every receiver holds at least ``count`` distinct messages (deduplicated by messageId)."""
    for _, receiver, _ in pairs:
        await receiver.wait_for(lambda fs, r=receiver: len(received_ids(r)) >= count or None, timeout=timeout)


async def test_kill_9_a_writer_then_a_notifier_with_2000_messages_in_flight(system):
    # the first of each starts alone, so it is the active consumer of every partition: the one to kill
    writer0 = await system.start("writer")
    writer1 = await system.start("writer")
    notifier0 = await system.start("notifier")
    notifier1 = await system.start("notifier")
    await system.start("gateway")
    await system.start("gateway")

    wave1 = await pairs_of(system, 20, "w1")
    sending = asyncio.create_task(burst(wave1, 100, "a"))  # 2,000 messages
    await wait_until(lambda: _at_least(system, 150), timeout=30)
    writer0.kill()
    await sending
    await wait_all_echoed(wave1, 100, timeout=60)

    wave2 = await pairs_of(system, 20, "w2")
    before = sum(len(received_ids(r)) for _, r, _ in wave2)
    sending = asyncio.create_task(burst(wave2, 100, "b"))
    await wait_until(lambda: _received_at_least(wave2, before + 150), timeout=30)
    notifier0.kill()
    await sending
    await wait_all_echoed(wave2, 100, timeout=60)

    for pairs in (wave1, wave2):
        await wait_all_received(pairs, 100, timeout=30)
    assert await check_guarantees(system, wave1 + wave2) == 4000
    # the survivors really took over the killed ones' partitions
    assert '"batch_stored"' in writer1.output() and '"events_routed"' in notifier1.output()
    for sender, _, _ in wave1 + wave2:
        assert not sender.of_type("error")
        assert_sent_order_kept(sender, 100)


async def test_sigterm_to_a_writer_under_load_finishes_its_batch_and_loses_nothing(system):
    writer0 = await system.start("writer")
    writer1 = await system.start("writer")
    await system.start_all(writers=0, gateways=2)
    pairs = await pairs_of(system, 10, "t")
    sending = asyncio.create_task(burst(pairs, 100, "c", pace=0.03))  # about 3 s of sending
    await wait_until(lambda: _at_least(system, 100), timeout=30)
    writer0.proc.send_signal(signal.SIGTERM)
    await sending
    await wait_all_echoed(pairs, 100, timeout=60)
    assert await asyncio.to_thread(writer0.proc.wait, 30) == 0  # a clean exit, within the grace period
    assert '"batch_stored"' in writer1.output()
    assert await check_guarantees(system, pairs) == 1000
    for sender, _, _ in pairs:
        assert not sender.of_type("error")


async def _at_least(system: System, n: int) -> bool:
    return await system.count_messages() >= n


async def _received_at_least(pairs, n: int) -> bool:
    return sum(len(received_ids(r)) for _, r, _ in pairs) >= n


def outcome_of(temp_id: str, errors_before: int):
    """A predicate: the echo of ``temp_id``, or an error for it newer than the ones seen before."""

    def find(frames: list[dict]) -> dict | None:
        echo = next((f for f in frames if f.get("type") == "new-message" and f.get("tempMessageId") == temp_id), None)
        if echo is not None:
            return echo
        errors = [f for f in frames if f.get("type") == "error" and f.get("tempMessageId") == temp_id]
        return errors[-1] if len(errors) > errors_before else None

    return find


async def reliable_sender(client: WsClient, cid: uuid.UUID, count: int, tag: str, pace: float) -> None:
    """A client as the contract asks: on `unavailable` (or no echo in 5 s) resend the same tempMessageId."""
    for i in range(count):
        temp_id = f"{tag}-{i}"
        while True:
            errors_before = len([f for f in client.of_type("error") if f.get("tempMessageId") == temp_id])
            try:
                await client.send_message(cid, f"{tag} {i}", temp_id=temp_id)
            except ConnectionError:  # closed with 1012: the client is reconnecting
                await asyncio.sleep(0.5)
                continue
            try:
                outcome = await client.wait_for(outcome_of(temp_id, errors_before), timeout=5)
            except asyncio.TimeoutError:
                continue
            if outcome["type"] == "new-message":
                break
            assert outcome["code"] in ("unavailable", "rate_limited"), outcome
            await asyncio.sleep(0.5)
        await asyncio.sleep(pace)


def consumers_per_queue(system: System) -> dict[str, int]:
    out = system.rabbitmqctl(
        "list_queues", "-p", system.vhost, "name", "consumers", "--quiet", "--no-table-headers"
    ).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.strip().splitlines() if line.strip()}


async def every_queue_consumed(system: System) -> bool:
    """4 command and 4 event partitions and 2 gateway queues exist, each with a consumer."""
    queues = consumers_per_queue(system)
    wanted = [q for q in queues if q.startswith(("chat.commands.", "chat.events.", "chat.gateway."))]
    return len(wanted) == 4 + 4 + 2 and all(queues[q] >= 1 for q in wanted)


PER_SENDER = 120


async def stream_through(
    system: System, tag: str, outage: Callable[[], Awaitable[None]], *, catch_up: bool = False
) -> list[tuple[WsClient, WsClient, uuid.UUID]]:
    """Two gateways, 8 senders each resending as the contract asks (:func:`reliable_sender`),
    ``outage`` once 200 messages are stored; then every guarantee is checked."""
    await system.start_all(gateways=2, writers=1, notifiers=1, query=catch_up)
    pairs = await pairs_of(system, 8, tag, catch_up=catch_up)
    senders = [asyncio.create_task(reliable_sender(s, cid, PER_SENDER, s.user, 0.05)) for s, _, cid in pairs]
    await wait_until(lambda: _at_least(system, 200), timeout=30)
    await outage()
    await asyncio.wait_for(asyncio.gather(*senders), timeout=240)
    await wait_all_received(pairs, PER_SENDER, timeout=60)
    assert await check_guarantees(system, pairs) == PER_SENDER * len(pairs)
    return pairs


def assert_running(services: list[Service]) -> None:
    for service in services:
        assert service.proc.poll() is None, f"{service.name} died"


async def test_rabbitmq_then_redis_restart_mid_stream(system):
    """Deliveries to gateways are transient: a gateway that loses the broker closes its sockets
    with 1012, and clients that reconnect and catch up over REST (as the contract asks) miss nothing."""

    async def outage() -> None:
        await asyncio.to_thread(system.stack.rabbitmq.stop)
        await asyncio.sleep(1)
        await asyncio.to_thread(system.stack.rabbitmq.start)
        await wait_until(lambda: _at_least(system, 500), timeout=60)
        # every queue has its consumer again (aio-pika #231 cannot bite: we reconnect from scratch)
        await wait_until(lambda: every_queue_consumed(system), timeout=30, interval=1)
        await asyncio.to_thread(system.stack.redis.stop)
        await asyncio.sleep(1)
        await asyncio.to_thread(system.stack.redis.start)

    pairs = await stream_through(system, "r", outage, catch_up=True)
    assert all(client.restarts >= 1 for pair in pairs for client in pair[:2])  # each was told to reconnect
    assert_running(system.services)


async def test_postgres_crash_mid_stream_loses_nothing_and_repeats_nothing(system):
    """Postgres quits as in a crash (no shutdown checkpoint; the WAL is replayed at start) while
    messages flow. The gateways keep taking commands (the broker holds them), the writer retries its
    batch in place until Postgres is back, and clients that resend what got no echo in 5 s (the
    contract's retry) get their original message back, not a second one."""

    async def outage() -> None:
        await asyncio.to_thread(system.stack.postgres.crash)
        await asyncio.sleep(2)
        await asyncio.to_thread(system.stack.postgres.start)

    pairs = await stream_through(system, "pg", outage)
    assert '"batch_retry"' in system.of("writer")[0].output()  # it did meet the outage, and waited it out in place
    for sender, receiver, _ in pairs:
        assert sender.closed_code is None and receiver.closed_code is None  # a database outage closes no socket
        assert_sent_order_kept(sender, PER_SENDER)
    assert_running(system.services)


async def test_a_gateway_killed_mid_stream_costs_its_clients_a_reconnect_and_nobody_a_message(system):
    """kill -9 of one of two gateways while 8 senders stream: its clients' sockets break (1006),
    they reconnect to the other gateway and catch up over REST, and resend what got no echo; the
    clients of the surviving gateway notice nothing. Every echoed message is stored exactly once and
    reaches every participant, in the order sent."""

    async def outage() -> None:
        system.of("gateway")[0].kill()

    pairs = await stream_through(system, "gw", outage, catch_up=True)
    for i, (sender, receiver, _) in enumerate(pairs):  # pairs_of puts sender i on gateway i % 2
        on_killed, on_survivor = (sender, receiver) if i % 2 == 0 else (receiver, sender)
        assert on_killed.restarts >= 1
        assert on_survivor.restarts == 0 and on_survivor.closed_code is None
        assert_sent_order_kept(sender, PER_SENDER)
    killed = system.of("gateway")[0]
    assert_running([s for s in system.services if s is not killed])
