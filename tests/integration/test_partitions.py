"""Replicas share the partitions, hand them over on join, leave and crash, and a command that
cannot be stored fails alone. Ownership is read from the broker (who is the *active* consumer
of each queue), not from what the replicas believe."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import signal
import time
import uuid

import aio_pika

from devtools.proxy import TcpProxy
from devtools.stack import wait_ready
from shared import topology

from ..harness import System, WsClient
from ..protocol import problems
from .test_resilience import burst, check_guarantees, echoes, pairs_of, wait_all_echoed, wait_all_received, wait_until

P = 8


def shares(system: System, prefix: str) -> dict[str, int]:
    return dict(collections.Counter(system.active_consumers(prefix).values()))


async def wait_shared(system: System, prefix: str, instances: list[str], timeout: float) -> float:
    """Wait until every partition has an active consumer and each instance has P/N give or take one."""
    started = time.monotonic()
    low, high = P // len(instances), -(-P // len(instances))
    while True:
        active = system.active_consumers(prefix)
        counts = collections.Counter(active.values())
        if len(active) == P and set(counts) == set(instances) and all(low <= c <= high for c in counts.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{prefix}: {dict(counts)} after {timeout}s, wanted {instances} with {low}-{high}")
        await asyncio.sleep(0.5)


def ident(system: System, service) -> str:
    index = [s for s in system.services if s.name == service.name].index(service)
    return f"{service.name}-{index}-{service.port}"


async def test_two_writers_and_two_notifiers_both_work_and_a_leaver_hands_over(system):
    system.partitions = P
    writers = [await system.start("writer"), await system.start("writer")]
    notifiers = [await system.start("notifier"), await system.start("notifier")]
    await system.start_all(writers=0, notifiers=0, gateways=2)
    await wait_shared(system, "chat.commands.", [ident(system, w) for w in writers], timeout=15)
    await wait_shared(system, "chat.events.", [ident(system, n) for n in notifiers], timeout=15)

    pairs = await pairs_of(system, 48, "s")  # 48 conversations over 8 partitions
    await burst(pairs, 10, "m")
    await wait_all_echoed(pairs, 10, timeout=60)
    await wait_all_received(pairs, 10, timeout=30)
    assert await check_guarantees(system, pairs) == 480
    stored = [await system.metric(w, "chat_messages_stored_total") for w in writers]
    routed = [await system.metric(n, "chat_frames_routed_total") for n in notifiers]
    assert sum(stored) == 480 and min(stored) >= 480 * 0.2, stored  # both did a real share, not 100/0
    assert min(routed) > 0, routed
    assert (
        await system.metric(writers[0], "chat_partition_owned")
        == shares(system, "chat.commands.")[ident(system, writers[0])]
    )

    # a graceful leave: the other notifier is active on every partition within 15 s
    notifiers[1].proc.send_signal(signal.SIGTERM)
    await wait_shared(system, "chat.events.", [ident(system, notifiers[0])], timeout=15)
    assert await asyncio.to_thread(notifiers[1].proc.wait, 30) == 0
    await pairs[0][0].send_message(pairs[0][2], "after the leave", temp_id="after")
    await pairs[0][1].wait_frame(type="new-message", tempMessageId="after")


async def test_a_killed_writer_is_replaced_then_gets_its_share_back_and_nothing_is_lost(system):
    system.partitions = P
    writer0 = await system.start("writer")
    writer1 = await system.start("writer")
    await system.start_all(writers=0, notifiers=1, gateways=2)
    await wait_shared(system, "chat.commands.", [ident(system, writer0), ident(system, writer1)], timeout=15)

    pairs = await pairs_of(system, 16, "k")
    sending = asyncio.create_task(burst(pairs, 100, "k", pace=0.04))  # about 4 s of steady load
    await asyncio.sleep(1.0)
    writer0.kill()
    took_over = await wait_shared(system, "chat.commands.", [ident(system, writer1)], timeout=30)
    writer2 = await system.start("writer")  # it comes back (a new pod)
    came_back = await wait_shared(
        system, "chat.commands.", [ident(system, writer1), ident(system, writer2)], timeout=15
    )
    await sending
    await wait_all_echoed(pairs, 100, timeout=90)
    await wait_all_received(pairs, 100, timeout=30)
    assert await check_guarantees(system, pairs) == 1600
    for sender, _, _ in pairs:
        assert not sender.of_type("error")
        mine = sorted(echoes(sender).values(), key=lambda f: f["seq"])
        assert [int(f["tempMessageId"].split("-")[1]) for f in mine] == list(range(100))  # sent order kept
    print(f"took over in {took_over:.1f}s, share back in {came_back:.1f}s")


async def test_a_writer_that_gets_a_conversation_back_acts_on_where_it_is_now(system):
    """A writer remembers its conversations between batches (to skip a read); one that hands a
    partition over and gets it back must not trust what it remembered: a read moves to the end."""
    system.partitions = P
    first = await system.start("writer")
    await system.start_all(writers=0, notifiers=1, gateways=1)
    await wait_shared(system, "chat.commands.", [ident(system, first)], timeout=15)
    by_partition: dict[int, tuple[str, str, uuid.UUID]] = {}
    for n in itertools.count():  # one conversation in every partition: whichever move, one of ours does
        if len(by_partition) == P:
            break
        cid = await system.conversation([f"back-a{n}", f"back-b{n}"])
        by_partition.setdefault(topology.partition(cid, P), (f"back-a{n}", f"back-b{n}", cid))
    clients = {}
    for p, (user_a, user_b, cid) in by_partition.items():
        a, b = await system.connect(user_a), await system.connect(user_b)
        await b.send_message(cid, "first", temp_id="first")  # the first writer remembers b has read seq 1
        await a.wait_frame(type="new-message", tempMessageId="first")
        clients[p] = (a, b, cid)

    second = await system.start("writer")
    await wait_shared(system, "chat.commands.", [ident(system, first), ident(system, second)], timeout=15)
    moved = {
        int(q.rsplit(".", 1)[1])
        for q, i in system.active_consumers("chat.commands.").items()
        if i == ident(system, second)
    }
    assert moved
    for p in moved:  # stored by the second writer: the first does not know
        a, b, cid = clients[p]
        await a.send_message(cid, "second", temp_id="second")
        await b.wait_frame(type="new-message", tempMessageId="second", seq=2)
    assert await asyncio.to_thread(second.terminate) == 0
    await wait_shared(system, "chat.commands.", [ident(system, first)], timeout=15)

    for p in moved:
        a, b, cid = clients[p]
        await b.send({"action": "read-messages", "conversationId": str(cid)})
        assert (await b.wait_frame(type="read-messages"))["lastReadSeq"] == 2
        assert (await a.wait_frame(type="read-receipt", userId=b.user))["lastReadSeq"] == 2


POISON_TRIGGER = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.content LIKE '%poison-pill%' THEN
    RAISE EXCEPTION 'injected failure for %', NEW.temp_message_id USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def dead_letters(system: System) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(system.stack.rabbitmq.url(system.vhost))
    try:
        channel = await connection.channel()
        queue = await channel.get_queue("chat.dead")
        out = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append(message)
        return out
    finally:
        await connection.close()


async def test_a_command_that_cannot_be_stored_fails_alone_among_200_good_ones(system):
    """One command the database refuses (an injected constraint) and one with U+0000 travel with
    200 good ones from other users: the good ones are stored and delivered at once, the culprits go
    to chat.dead with their reason and their sender hears `error` with the tempMessageId."""
    conn = await system.db()
    try:
        await conn.execute(POISON_TRIGGER)
    finally:
        await conn.close()
    await system.start_all(writers=1, notifiers=1, gateways=1)
    pairs = await pairs_of_one_gateway(system, 20)
    mallory = await system.connect("mallory")
    victim_cid = await system.conversation(["mallory", "bob"])

    async def attack() -> None:
        await asyncio.sleep(0.05)
        await mallory.send_message(victim_cid, "a poison-pill for the writer", temp_id="bad-1")
        await mallory.send_message(victim_cid, "nul \u0000 byte", temp_id="bad-2")

    loop = asyncio.get_running_loop()
    sent_at: dict[str, float] = {}

    async def good(sender: WsClient, cid: uuid.UUID) -> None:
        for i in range(10):
            temp = f"{sender.user}-{i}"
            sent_at[temp] = loop.time()
            await sender.send_message(cid, f"good {i}", temp_id=temp)
            await asyncio.sleep(0.01)

    await asyncio.gather(attack(), *(good(s, cid) for s, _, cid in pairs))
    await wait_all_echoed(pairs, 10, timeout=30)
    for temp in ("bad-1", "bad-2"):
        error = await mallory.wait_frame(type="error", tempMessageId=temp)
        assert error["code"] == "invalid_frame" and error["action"] == "send-message"

    # none of the 200 is lost or late: each echo came within 2 s of its send (a stall was 20 s)
    assert await check_guarantees(system, pairs) == 200
    for sender, _, _ in pairs:
        for index, frame in enumerate(sender.frames):
            if frame.get("type") == "new-message" and frame["senderId"] == sender.user:
                assert sender.arrived[index] - sent_at[frame["tempMessageId"]] < 2.0, frame
        assert not sender.of_type("error")
    conn = await system.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE sender_id = 'mallory'") == 0
    finally:
        await conn.close()

    # the culprits, and only they, are in the dead-letter queue, with the reason in a header
    dead = await dead_letters(system)
    by_temp = {json.loads(m.body)["items"][0]["temp_message_id"]: m for m in dead}
    assert not [p for m in dead for p in problems("Commands", m.body)]  # a culprit is a Commands body
    assert set(by_temp) <= {"bad-1", "bad-2"}
    assert "bad-1" in by_temp and "injected failure for bad-1" in str(by_temp["bad-1"].headers["x-chat-reason"])
    assert all(m.headers["x-chat-queue"].startswith("chat.commands.") for m in dead)
    for service in system.services:
        assert service.proc.poll() is None


async def pairs_of_one_gateway(system: System, n: int) -> list[tuple[WsClient, WsClient, uuid.UUID]]:
    out = []
    for i in range(n):
        s, r = f"good-s{i}", f"good-r{i}"
        cid = await system.conversation([s, r])
        out.append((await system.connect(s), await system.connect(r), cid))
    return out


async def test_a_service_started_with_another_partition_count_is_refused(system):
    system.partitions = 4
    await system.start("writer")
    other = system.spawn("gateway", env={"CHAT_PARTITIONS": "16"})
    code = await asyncio.to_thread(other.proc.wait, 30)
    assert code == 2
    assert "CHAT_PARTITIONS=16 does not match this broker" in other.output()


async def test_a_writer_cut_off_from_redis_keeps_working_beside_one_that_is_not(system):
    """A network split between one writer and Redis: it subscribes to every partition and the
    broker keeps one consumer active per queue, so nothing stalls and nothing is stored twice."""
    system.partitions = P
    cut = await system.start("writer", env={"CHAT_REDIS_URL": "redis://127.0.0.1:1/0"})
    healthy = await system.start("writer")
    await system.start_all(writers=0, notifiers=1, gateways=2)
    await asyncio.sleep(3)  # both have subscribed to something by now
    assert len(system.active_consumers("chat.commands.")) == P  # every partition is consumed
    assert await system.metric(cut, "chat_partition_fallback") == 1
    assert await system.metric(healthy, "chat_partition_fallback") == 0

    pairs = await pairs_of(system, 16, "x")
    await burst(pairs, 20, "x")
    await wait_all_echoed(pairs, 20, timeout=60)
    await wait_all_received(pairs, 20, timeout=30)
    assert await check_guarantees(system, pairs) == 320


async def test_a_notifier_cut_off_from_redis_lets_its_partitions_go_to_one_that_is_not(system):
    """A notifier cannot route without Redis: cut off from it, it holds no partition, so the
    healthy one routes every event (a writer in the same split keeps working, above)."""
    system.partitions = P
    cut = system.spawn("notifier", env={"CHAT_REDIS_URL": "redis://127.0.0.1:1/0"})
    await wait_ready(cut.url, path="/healthz", proc=cut.proc)  # alive, and not ready: Redis is out of reach
    healthy = await system.start("notifier")
    await system.start_all(writers=1, notifiers=0, gateways=2)
    await asyncio.sleep(3)  # longer than the cut one waits before giving its partitions up (it never had a lease)
    active = system.active_consumers("chat.events.")
    assert len(active) == P and set(active.values()) == {f"notifier-1-{healthy.port}"}  # the second one started
    assert await system.metric(cut, "chat_partition_fallback") == 1

    pairs = await pairs_of(system, 16, "n")
    await burst(pairs, 20, "n")
    await wait_all_echoed(pairs, 20, timeout=60)
    await wait_all_received(pairs, 20, timeout=30)
    assert await check_guarantees(system, pairs) == 320


async def test_a_writer_cut_off_from_the_broker_lets_its_partitions_go(system):
    """A writer that reaches Redis but not the broker (its node down, a split) would keep its lease
    and, with it, partitions nobody consumes: it stops renewing, and the others take them."""
    system.partitions = P
    proxy = await TcpProxy.start([("127.0.0.1", system.stack.rabbitmq.port)])
    try:
        cut = await system.start(
            "writer", env={"CHAT_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/{system.vhost}"}
        )
        healthy = await system.start("writer")
        await system.start_all(writers=0, notifiers=1, gateways=2)
        await wait_until(lambda: _consumed_by(system, {cut.port, healthy.port}), timeout=30)
        await proxy.close()  # the broker is out of the cut one's reach from now on
        await wait_until(lambda: _consumed_by(system, {healthy.port}), timeout=20)
        pairs = await pairs_of(system, 8, "cut")
        await burst(pairs, 10, "cut")
        await wait_all_echoed(pairs, 10, timeout=60)
        assert await check_guarantees(system, pairs) == 80
        assert '"membership_paused"' in cut.output()
    finally:
        await proxy.close()


async def _consumed_by(system: System, ports: set[int]) -> bool:
    """Every command partition has an active consumer, and those are exactly the writers on ``ports``."""
    active = await asyncio.to_thread(system.active_consumers, "chat.commands.")
    return len(active) == P and {int(i.rsplit("-", 1)[1]) for i in active.values()} == ports


async def test_a_stalled_partition_does_not_hold_the_others(system):
    """A row lock holds one conversation's partition; conversations in the other partitions are
    stored and delivered meanwhile, and the stalled one catches up in order once it is released."""
    from shared.topology import partition

    await system.start_all(writers=1, notifiers=1, gateways=1)
    by_partition: dict[int, tuple[WsClient, WsClient, uuid.UUID]] = {}
    i = 0
    while len(by_partition) < system.partitions:
        s, r = f"p-s{i}", f"p-r{i}"
        cid = await system.conversation([s, r])
        if partition(cid, system.partitions) not in by_partition:
            by_partition[partition(cid, system.partitions)] = (await system.connect(s), await system.connect(r), cid)
        i += 1
    stalled_sender, stalled_receiver, stalled_cid = by_partition.pop(0)
    others = list(by_partition.values())

    blocker = await system.db()
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", stalled_cid)
    try:
        for n in range(3):
            await stalled_sender.send_message(stalled_cid, f"held {n}", temp_id=f"held-{n}")
        await asyncio.sleep(0.3)
        await burst(others, 5, "free")
        await wait_all_echoed(others, 5, timeout=5)  # the others are not held behind the lock
        assert not echoes(stalled_sender)
    finally:
        await tx.rollback()
        await blocker.close()
    await stalled_sender.wait_for(lambda fs: len(echoes(stalled_sender)) >= 3 or None, timeout=30)
    assert [f["seq"] for f in sorted(echoes(stalled_sender).values(), key=lambda f: f["tempMessageId"])] == [1, 2, 3]
    assert await check_guarantees(system, [*others, (stalled_sender, stalled_receiver, stalled_cid)]) == 3 * 5 + 3


async def test_a_retry_is_visible_while_it_lasts_and_loses_nothing(system):
    """A writer whose database is unreachable retries in place: chat_consumer_retrying says so and
    `batch_retry` is logged; its sender gets no error. A writer that can reach it stores the
    message once the first one is gone."""
    broken = system.spawn("writer", env={"CHAT_DATABASE_URL": "postgresql://chat@127.0.0.1:1/chat"})
    await system.start_all(writers=0, notifiers=1, gateways=1)
    alice = await system.connect("alice")
    cid = await system.conversation(["alice", "bob"])
    await asyncio.sleep(3)  # the broken writer has taken every partition (it is the only member)
    await alice.send_message(cid, "waits for the database", temp_id="w1")

    async def retrying() -> bool:
        return await system.metric(broken, "chat_consumer_retrying") == 1

    deadline = time.monotonic() + 15
    while not await retrying():
        assert time.monotonic() < deadline, broken.output()[-2000:]
        await asyncio.sleep(0.5)
    assert '"batch_retry"' in broken.output()
    assert await system.metric(broken, "chat_consumer_retries_total") >= 1

    broken.terminate()
    await system.start("writer")
    echo = await alice.wait_frame(type="new-message", tempMessageId="w1")
    assert echo["seq"] == 1 and not alice.of_type("error")


async def test_an_undecodable_event_body_is_set_aside_and_the_others_are_delivered(system):
    """The notifier's poison: a body on chat.events that is not an envelope goes to chat.dead at
    once with its reason; the events published around it reach the sockets."""
    from shared.topology import partition

    await system.start_all()
    alice, bob = await system.connect("alice"), await system.connect("bob")
    cid = await system.conversation(["alice", "bob"])
    connection = await aio_pika.connect(system.stack.rabbitmq.url(system.vhost))
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange("chat.events")
        key = str(partition(cid, system.partitions))
        await alice.send_message(cid, "before", temp_id="before")
        await bob.wait_frame(type="new-message", tempMessageId="before")
        await exchange.publish(aio_pika.Message(b'{"v": 1, "items": [{"type": "no-such-event"}]}'), routing_key=key)
        await alice.send_message(cid, "after", temp_id="after")
        await bob.wait_frame(type="new-message", tempMessageId="after")
    finally:
        await connection.close()
    dead = await dead_letters(system)
    assert len(dead) == 1 and dead[0].headers["x-chat-queue"] == f"chat.events.{key}"
    assert "no-such-event" in str(dead[0].headers["x-chat-reason"])
