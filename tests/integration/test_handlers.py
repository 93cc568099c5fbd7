"""The writer's and the notifier's handlers in-process, with a fake publisher (Zulip-style):
real Postgres and Redis, no broker. The consumer's isolation rule runs on top of the real handler."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
import redis.asyncio as aioredis
import yaml

from notifier.app import Notifier, TypingRouter
from shared import envelope, topology
from shared.amqp import Backoff, Broker, Poison, Retryable, Unavailable, Unroutable, isolate
from shared.amqp_socket import CoalescingTransportFactory
from shared.db import Database
from shared.envelope import Origin, ReadMessages, SendMessage, StartTyping
from shared.registry import Registry
from writer import ephemeral
from writer import store as store_module
from writer.app import RETRY, Writer
from writer.ephemeral import TypingChecker
from writer.store import LOCKED

from ..conftest import new_database
from ..factories import message_stored
from ..protocol import problems

ORIGIN = Origin("gw-test", "conn-1")


class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.published: list[tuple[str, str, bytes]] = []
        self.persistent: list[bool] = []
        self.fail = fail

    async def publish(self, exchange: str, routing_key: str, body: bytes, **kw: Any) -> None:
        if self.fail:
            raise Unavailable("broker down")
        schema = "Events" if exchange in (topology.EVENTS, topology.TYPING_EVENTS) else "Deliveries"
        assert not problems(schema, body), problems(schema, body)  # real bodies match gateway/asyncapi.yaml
        self.published.append((exchange, routing_key, body))
        self.persistent.append(kw.get("persistent", True))

    def events(self, exchange: str = topology.EVENTS) -> list[envelope.Event]:
        """The events published to ``exchange``, in order."""
        return [
            e for ex, _, body in self.published if ex == exchange for e in envelope.decode(envelope.Events, body).items
        ]


@pytest.fixture
async def writer_db(stack):
    dsn = stack.postgres.dsn(new_database(stack))
    db = Database(dsn, max_size=2)
    db.start()
    while db.pool is None:  # the pool is created in the background
        await asyncio.sleep(0.05)
    conn = await asyncpg.connect(dsn)
    cid = uuid.uuid4()
    await conn.execute(
        "INSERT INTO conversations (id, is_group, created_by, direct_key) VALUES ($1, false, 'a', 'a b')", cid
    )
    await conn.executemany(
        "INSERT INTO participants (conversation_id, user_id) VALUES ($1, $2)", [(cid, "alice"), (cid, "bob")]
    )
    yield db, conn, cid
    await conn.close()
    await db.close()


def send(cid: uuid.UUID, temp: str, content: str = "hi", user: str = "alice") -> SendMessage:
    return SendMessage(user_id=user, conversation_id=cid, temp_message_id=temp, content=content, origin=ORIGIN)


async def test_writer_stores_and_announces_in_order(writer_db):
    db, conn, cid = writer_db
    fake = FakePublisher()
    writer = Writer(db, fake, partitions=4)
    await writer.handle(
        [
            send(cid, "t1", "one"),
            send(cid, "t2", "two"),
            ReadMessages(user_id="bob", conversation_id=cid, origin=ORIGIN),
        ]
    )
    events = fake.events()
    assert [(type(e).__name__, getattr(e, "seq", None)) for e in events] == [
        ("MessageStored", 1),
        ("MessageStored", 2),
        ("ReadUpdated", None),
    ]
    assert events[2].last_read_seq == 2
    assert fake.published[0][1] == str(topology.partition(cid, 4))
    # redelivery is harmless: the same commands again store nothing and re-announce the originals
    await writer.handle([send(cid, "t1", "one")])
    assert fake.events()[-1].message_id == events[0].message_id
    assert await conn.fetchval("SELECT count(*) FROM messages") == 2


async def test_two_writers_storing_one_conversation_at_once_keep_seq_gapless(writer_db):
    """The fast path takes no lock; a writer that lost the race for a seq stores again, locked."""
    db, conn, cid = writer_db
    fakes = [FakePublisher(), FakePublisher()]
    writers = [Writer(db, fake, partitions=4) for fake in fakes]
    locked = LOCKED._value.get()
    for round_ in range(20):
        await asyncio.gather(
            *(
                w.handle([send(cid, f"w{n}-{round_}-{i}", user=("alice", "bob")[n]) for i in range(3)])
                for n, w in enumerate(writers)
            )
        )
    rows = await conn.fetch("SELECT seq, temp_message_id FROM messages WHERE conversation_id = $1 ORDER BY seq", cid)
    assert [r["seq"] for r in rows] == list(range(1, 121))
    announced = sorted(e.seq for fake in fakes for e in fake.events())
    assert announced == list(range(1, 121))  # each stored message announced once, with the seq it was stored under
    assert await conn.fetchval("SELECT last_seq FROM conversations WHERE id = $1", cid) == 120
    assert LOCKED._value.get() > locked  # the race did happen, and was settled under the lock


async def test_a_redelivered_batch_with_new_sends_stores_only_the_new_ones(writer_db):
    db, conn, cid = writer_db
    fake = FakePublisher()
    writer = Writer(db, fake, partitions=4)
    await writer.handle([send(cid, "a"), send(cid, "b")])
    await writer.handle([send(cid, "a"), send(cid, "c"), send(cid, "b"), send(cid, "d")])
    stored = await conn.fetch("SELECT seq, temp_message_id FROM messages ORDER BY seq")
    assert [(r["seq"], r["temp_message_id"]) for r in stored] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    assert [(e.temp_message_id, e.seq) for e in fake.events()][2:] == [("a", 1), ("c", 3), ("b", 2), ("d", 4)]
    reads = await conn.fetch(
        "SELECT user_id, last_read_seq, last_sent_at IS NOT NULL AS listed FROM participants ORDER BY user_id"
    )
    assert [tuple(r) for r in reads] == [("alice", 4, True), ("bob", 0, True)]


async def test_writer_says_retryable_when_the_broker_cannot_take_its_events(writer_db):
    db, _, cid = writer_db
    with pytest.raises(Retryable):
        await Writer(db, FakePublisher(fail=True), partitions=4).handle([send(cid, "t1")])


async def test_a_command_postgres_refuses_fails_alone_and_its_sender_is_told(writer_db):
    db, conn, cid = writer_db
    fake = FakePublisher()
    writer = Writer(db, fake, partitions=4)
    batch = [send(cid, f"g{i}", f"good {i}") for i in range(5)]
    batch.insert(2, send(cid, "nul", "bad \u0000 value"))
    batch.insert(4, send(cid, "surrogate", "bad \ud800 value"))
    dead: list[tuple[envelope.Command, str]] = []

    async def poisoned(item: envelope.Command, reason: str) -> None:
        dead.append((item, reason))
        await writer.rejected(item, reason)

    assert await isolate(batch, writer.handle, poisoned, Backoff(0.001, 0.001))
    assert [item.temp_message_id for item, _ in dead] == ["nul", "surrogate"]
    assert "CharacterNotInRepertoire" in dead[0][1]
    rows = await conn.fetch("SELECT temp_message_id, seq FROM messages ORDER BY seq")
    assert [(r["temp_message_id"], r["seq"]) for r in rows] == [(f"g{i}", i + 1) for i in range(5)]
    rejected = [e for e in fake.events() if isinstance(e, envelope.CommandRejected)]
    assert [(e.temp_message_id, e.code, e.origin) for e in rejected] == [
        ("nul", "invalid_frame", ORIGIN),
        ("surrogate", "invalid_frame", ORIGIN),
    ]


async def test_notifier_routes_to_the_gateways_holding_the_recipients(stack):
    client = aioredis.Redis.from_url(stack.redis.url(14))
    await client.flushdb()
    try:
        registry = Registry(client)
        for lease in ("gw-a|1", "gw-b|1"):
            await registry.take(lease)
        await registry.register("gw-a|1", [("alice", "c1")])
        await registry.register("gw-b|1", [("bob", "c2"), ("alice", "c3")])
        await client.set("chat:registry:since", 0)  # an old registry: lookups are trusted
        fake = FakePublisher()
        cid = uuid.uuid4()
        stored = message_stored(conversation_id=cid)
        await Notifier(registry, fake).handle([stored])
        by_gateway = {key: envelope.decode(envelope.Deliveries, body).items for _, key, body in fake.published}
        assert set(by_gateway) == {"gw-a", "gw-b"}
        assert by_gateway["gw-a"][0].users == ["alice"]
        assert sorted(by_gateway["gw-b"][0].users) == ["alice", "bob"]
    finally:
        await client.flushdb()
        await client.aclose()


async def test_migration_0003_rewrites_old_direct_keys(stack):
    """Keys made with the old U+001F separator become the length-prefixed ones the code looks up."""
    from importlib import resources

    from query.store import direct_key

    conn = await asyncpg.connect(stack.postgres.dsn(new_database(stack)))
    try:
        pairs = [("alice", "bob"), ("a\x1fb", "c"), ("a", "b\x1fc")]
        for a, b in pairs:
            cid = uuid.uuid4()
            await conn.execute(
                "INSERT INTO conversations (id, is_group, created_by, direct_key) VALUES ($1, false, $2, $3)",
                cid,
                a,
                f"old-{cid}",
            )  # the old keys of the last two pairs would collide
            await conn.executemany(
                "INSERT INTO participants (conversation_id, user_id) VALUES ($1, $2)", [(cid, a), (cid, b)]
            )
        await conn.execute((resources.files("shared.migrations") / "0003_direct_key.sql").read_text())
        keys = {r["direct_key"] for r in await conn.fetch("SELECT direct_key FROM conversations")}
        assert keys == {direct_key(a, b) for a, b in pairs}
    finally:
        await conn.close()


async def test_an_event_the_notifier_cannot_route_fails_alone(stack):
    """A bug on one event (here: the registry breaks on one user) isolates that event; the events
    that travelled with it are routed, in order."""
    client = aioredis.Redis.from_url(stack.redis.url(13))
    await client.flushdb()
    try:
        registry = Registry(client)
        await registry.take("gw-a|1")
        await registry.register("gw-a|1", [("alice", "c1"), ("bob", "c2")])
        await client.set("chat:registry:since", 0)

        class Broken(Registry):
            async def instances(self, user_ids, fresh=()):
                if "mallory" in user_ids:
                    raise KeyError("a bug that only this event triggers")
                return await super().instances(user_ids, fresh)

        fake = FakePublisher()
        notifier = Notifier(Broken(client), fake)
        cid = uuid.uuid4()

        def stored(seq: int, members: list[str]) -> envelope.MessageStored:
            return message_stored(conversation_id=cid, seq=seq, sender_id=members[0], participants=members)

        events = [stored(1, ["alice", "bob"]), stored(2, ["mallory", "bob"]), stored(3, ["alice", "bob"])]
        dead: list[str] = []

        async def poisoned(event: envelope.Event, reason: str) -> None:
            dead.append(reason)
            await notifier.rejected(event, reason)

        assert await isolate(events, notifier.handle, poisoned, Backoff(0.001, 0.001))
        assert dead == ["KeyError: 'a bug that only this event triggers'"]
        frames = [
            json.loads(item.frame)["seq"]
            for _, _, body in fake.published
            for item in envelope.decode(envelope.Deliveries, body).items
        ]
        assert frames == [1, 3]
    finally:
        await client.flushdb()
        await client.aclose()


async def test_broker_publish_confirms_marks_and_reports_an_unroutable_message(stack):
    """What every publisher relies on: a confirmed publish arrives with its delivery mode and
    headers; a mandatory publish nobody can take (a gateway that is gone) is Unroutable, not
    lost silently and not a broker failure; a broker that is not connected is Unavailable."""
    vhost = f"broker-{uuid.uuid4().hex[:8]}"
    stack.rabbitmq.add_vhost(vhost)
    broker = Broker(stack.rabbitmq.url(vhost), name="test")
    with pytest.raises(Unavailable):
        await broker.publish(topology.DELIVERIES, "nobody", b"{}")
    broker.start()
    connection = await aio_pika.connect(stack.rabbitmq.url(vhost))
    try:
        await asyncio.wait_for(broker.connected.wait(), 30)
        channel = await connection.channel()
        queue = await topology.declare_gateway_queue(channel, "here")
        await broker.publish(topology.DELIVERIES, "here", b'{"a":1}', mandatory=True, persistent=False)
        await broker.publish(topology.DELIVERIES, "here", b'{"b":2}', headers={"x-why": "test"})
        with pytest.raises(Unroutable):
            await broker.publish(topology.DELIVERIES, "gone", b"{}", mandatory=True)
        first = await queue.get(timeout=5)
        second = await queue.get(timeout=5)
        assert (first.body, first.delivery_mode, first.content_type) == (b'{"a":1}', 1, "application/json")
        assert (second.body, second.delivery_mode, second.headers) == (b'{"b":2}', 2, {"x-why": "test"})
        await broker.publish(topology.DELIVERIES, "here", b"{}")  # the channel survived the return
    finally:
        await connection.close()
        await broker.close()


async def test_the_broker_connection_writes_through_the_coalescing_socket(stack, monkeypatch):
    """shared/amqp.py hands our socket factory to aiormq through aio-pika's connection arguments,
    which aio-pika does not document: if an upgrade drops them, the services still work but every
    frame costs a write again (docs/benchmarks.md, "One write per event-loop turn"). This says so loudly."""
    created = []
    original = CoalescingTransportFactory.create

    async def counting(self, *args, **kwargs):
        created.append(args[0])
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(CoalescingTransportFactory, "create", counting)
    vhost = f"socket-{uuid.uuid4().hex[:8]}"
    stack.rabbitmq.add_vhost(vhost)
    broker = Broker(stack.rabbitmq.url(vhost), name="test")
    broker.start()
    try:
        await asyncio.wait_for(broker.connected.wait(), 30)
        await broker.publish("", "nobody-listens", b"{}")  # a confirmed publish over that socket
    finally:
        await broker.close()
    assert len(created) == 1 and created[0].port == stack.rabbitmq.port


async def test_typing_is_checked_and_passed_on_transient_and_never_stored(writer_db):
    db, conn, cid = writer_db
    fake = FakePublisher()
    typing = [
        StartTyping(user_id="bob", conversation_id=cid, origin=ORIGIN),
        StartTyping(user_id="mallory", conversation_id=cid, origin=Origin("gw-test", "conn-9")),
        StartTyping(user_id="bob", conversation_id=uuid.uuid4(), origin=ORIGIN),
    ]
    await TypingChecker(db, fake, RETRY).handle(typing)
    [(exchange, key, body)] = fake.published
    assert (exchange, key, fake.persistent) == (topology.TYPING_EVENTS, "", [False])
    events = envelope.decode(envelope.Events, body).items
    assert events[0] == envelope.TypingStarted(conversation_id=cid, user_id="bob", participants=["alice", "bob"])
    assert [(e.code, e.origin.conn) for e in events[1:] if isinstance(e, envelope.CommandRejected)] == [
        ("not_a_participant", "conn-9"),
        ("unknown_conversation", "conn-1"),
    ]
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_send_smuggled_onto_the_typing_path_is_set_aside_and_never_announced(writer_db):
    """Only the partitioned path stores: a send on chat.typing would be announced unstored."""
    db, _, cid = writer_db
    fake = FakePublisher()
    checker = TypingChecker(db, fake, RETRY)
    batch = [StartTyping(user_id="bob", conversation_id=cid, origin=ORIGIN), send(cid, "t1")]
    dead: list[envelope.Command] = []

    async def poisoned(item: envelope.Command, reason: str) -> None:
        dead.append(item)

    assert await isolate(batch, checker.handle, poisoned, Backoff(0.001, 0.001))
    assert dead == [batch[1]]
    announced = [e for _, _, body in fake.published for e in envelope.decode(envelope.Events, body).items]
    assert [type(e) for e in announced] == [envelope.TypingStarted]


async def test_a_writer_reads_a_conversation_once_and_then_acts_on_what_it_remembers(writer_db, monkeypatch):
    db, conn, cid = writer_db
    fake = FakePublisher()
    writer = Writer(db, fake, partitions=4)
    reads: list[list[uuid.UUID]] = []
    real = store_module.conversations

    async def counted(c, ids):
        reads.append(list(ids))
        return await real(c, ids)

    monkeypatch.setattr(store_module, "conversations", counted)
    await writer.handle([send(cid, "t1")])
    await writer.handle(
        [send(cid, "t2", user="bob"), ReadMessages(user_id="alice", conversation_id=cid, origin=ORIGIN)]
    )
    await writer.handle([ReadMessages(user_id="alice", conversation_id=cid, origin=ORIGIN)])  # nothing new: no write
    assert reads == [[cid]]  # the first batch read it; the others knew
    assert [(e.seq, e.sender_id) for e in fake.events() if isinstance(e, envelope.MessageStored)] == [
        (1, "alice"),
        (2, "bob"),
    ]
    # the read that moved the pointer goes to everyone; the repeated one is answered to alice alone
    reads_announced = [e for e in fake.events() if isinstance(e, envelope.ReadUpdated)]
    assert [(e.last_read_seq, e.participants) for e in reads_announced] == [(2, ["alice", "bob"]), (2, ["alice"])]
    writer.known.clear()  # as when its partitions change: the next batch reads again
    await writer.handle([send(cid, "t3")])
    assert reads == [[cid], [cid]]


async def test_a_writer_that_remembers_a_conversation_another_writer_moved_on_writes_nothing_from_it(writer_db):
    """What a writer remembers is stale if another writer stored meanwhile (a hand-over): the
    statement writes nothing, and the batch is stored again from the locked rows."""
    db, conn, cid = writer_db
    ours, theirs = FakePublisher(), FakePublisher()
    first, second = Writer(db, ours, partitions=4), Writer(db, theirs, partitions=4)
    await first.handle([send(cid, "t1")])  # first remembers last_seq 1, alice has read 1
    await second.handle([send(cid, "t2", user="bob"), send(cid, "t3", user="bob")])
    locked = LOCKED._value.get()
    await first.handle([ReadMessages(user_id="alice", conversation_id=cid, origin=ORIGIN), send(cid, "t4")])
    assert LOCKED._value.get() == locked + 1
    await second.handle([send(cid, "t5", user="alice")])  # now the second is behind: it took 4
    assert LOCKED._value.get() == locked + 2
    await first.handle([ReadMessages(user_id="bob", conversation_id=cid, origin=ORIGIN)])  # a read alone, stale too
    assert LOCKED._value.get() == locked + 3

    assert [(e.seq, e.temp_message_id) for e in ours.events() if isinstance(e, envelope.MessageStored)] == [
        (1, "t1"),
        (4, "t4"),
    ]
    assert [(e.user_id, e.last_read_seq) for e in ours.events() if isinstance(e, envelope.ReadUpdated)] == [
        ("alice", 4),  # remembered, she had read all (1 of 1): she read 2 and 3, then her own 4
        ("bob", 5),
    ]
    seqs = await conn.fetch("SELECT seq FROM messages WHERE conversation_id = $1 ORDER BY seq", cid)
    assert [r["seq"] for r in seqs] == [1, 2, 3, 4, 5]
    pointers = await conn.fetch(
        "SELECT user_id, last_read_seq FROM participants WHERE conversation_id = $1 ORDER BY user_id", cid
    )
    assert [(r["user_id"], r["last_read_seq"]) for r in pointers] == [("alice", 5), ("bob", 5)]
    latest = await conn.fetchrow("SELECT last_seq, last_content FROM conversations WHERE id = $1", cid)
    assert (latest["last_seq"], latest["last_content"]) == (5, "hi")


async def test_typing_is_dropped_not_retried_when_the_broker_cannot_take_it(writer_db):
    db, _, cid = writer_db
    broker = FakePublisher(fail=True)
    checker = TypingChecker(db, broker, RETRY)
    dropped = ephemeral.DROPPED.labels("broker")
    before = dropped._value.get()
    typing = [StartTyping(user_id="bob", conversation_id=cid, origin=ORIGIN)]
    await checker.handle(typing)  # returns, so the consumer acks: nothing waits for typing
    assert dropped._value.get() == before + 1
    broker.fail = False  # the broker is back: the next typing goes out, the dropped one does not
    await checker.handle(typing)
    assert [e.user_id for e in broker.events(topology.TYPING_EVENTS)] == ["bob"]
    assert dropped._value.get() == before + 1


async def test_the_notifier_routes_only_typing_from_the_typing_path():
    fake = FakePublisher()
    router = TypingRouter(Registry(aioredis.Redis()), fake)  # never reached: refused before any lookup
    with pytest.raises(Poison):
        await router.handle([message_stored(conversation_id=uuid.uuid4(), seq=1, sender_id="a", participants=["a"])])
    assert fake.published == []


async def test_typing_in_a_conversation_typed_in_before_needs_no_database(writer_db):
    db, conn, cid = writer_db
    fake = FakePublisher()
    checker = TypingChecker(db, fake, RETRY)
    later = uuid.uuid4()  # unknown now: refused, and not remembered as unknown
    await checker.handle([StartTyping(user_id="bob", conversation_id=c, origin=ORIGIN) for c in (cid, later)])
    await conn.execute(
        "INSERT INTO conversations (id, is_group, created_by, title) VALUES ($1, true, 'bob', 't')", later
    )
    await conn.execute("INSERT INTO participants (conversation_id, user_id) VALUES ($1, 'bob'), ($1, 'carol')", later)
    await checker.handle([StartTyping(user_id="bob", conversation_id=later, origin=ORIGIN)])
    await db.close()  # the members of both are known now
    await checker.handle(
        [
            StartTyping(user_id=u, conversation_id=c, origin=ORIGIN)
            for u, c in [("alice", cid), ("bob", later), ("eve", later)]
        ]
    )
    outcomes = [
        (e.user_id, e.participants) if isinstance(e, envelope.TypingStarted) else e.code
        for _, _, body in fake.published
        for e in envelope.decode(envelope.Events, body).items
    ]
    assert outcomes == [
        ("bob", ["alice", "bob"]),
        "unknown_conversation",
        ("bob", ["bob", "carol"]),
        ("alice", ["alice", "bob"]),
        ("bob", ["bob", "carol"]),
        "not_a_participant",
    ]


async def test_every_exchange_and_queue_the_services_use_is_within_the_deployed_permissions(stack):
    """The user deploy/k8s creates may touch ``^chat\\.`` only: everything the services declare,
    publish to and consume must be named so (the default exchange is not)."""
    manifest = (Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "data" / "rabbitmq.yaml").read_text()
    [permission] = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "Permission"]
    allowed = permission["spec"]["permissions"]
    vhost, user = f"perm-{uuid.uuid4().hex[:8]}", f"deployed-{uuid.uuid4().hex[:8]}"
    stack.rabbitmq.add_vhost(vhost)
    stack.rabbitmq.ctl("add_user", user, "secret")
    stack.rabbitmq.ctl("set_permissions", "-p", vhost, user, allowed["configure"], allowed["write"], allowed["read"])
    url = stack.rabbitmq.url(vhost).replace("guest:guest@", f"{user}:secret@")
    broker = Broker(url, name="deployed")
    broker.start()
    connection = await aio_pika.connect(url)
    try:
        await asyncio.wait_for(broker.connected.wait(), 30)
        channel = await connection.channel()
        queues = {
            "commands": (await topology.declare_commands(channel, 2))[0],
            "events": (await topology.declare_events(channel, 2))[0],
            "typing": await topology.declare_typing(channel, topology.TYPING),
            "typing events": await topology.declare_typing(channel, topology.TYPING_EVENTS),
            "gateway": await topology.declare_gateway_queue(channel, "gw"),
        }
        await broker.publish(topology.COMMANDS, "0", b'"commands"')
        await broker.publish(topology.EVENTS, "0", b'"events"')
        await broker.publish(topology.TYPING, "", b'"typing"', persistent=False)
        await broker.publish(topology.TYPING_EVENTS, "", b'"typing events"', persistent=False)
        await broker.publish(topology.DELIVERIES, "gw", b'"gateway"', mandatory=True, persistent=False)
        await broker.dead_letter(b'"dead"', "test", "here")
        queues["dead"] = await channel.get_queue(topology.DEAD, ensure=False)
        for name, queue in queues.items():  # consumed, as the services do (quorum queues refuse basic.get)
            async with queue.iterator() as messages:
                message = await asyncio.wait_for(anext(messages), 5)
                assert message.body == f'"{name}"'.encode()
                await message.ack()
    finally:
        await connection.close()
        await broker.close()


async def test_the_members_kept_for_typing_are_bounded_least_recently_typed_in_first(writer_db, monkeypatch):
    db, conn, cid = writer_db
    monkeypatch.setattr(ephemeral, "KNOWN_MEMBERS_MAX", 5)  # conversations of 2: two fit, not three
    others = [uuid.uuid4(), uuid.uuid4()]
    for other in others:
        await conn.execute(
            "INSERT INTO conversations (id, is_group, created_by, title) VALUES ($1, true, 'a', 't')", other
        )
        await conn.execute(
            "INSERT INTO participants (conversation_id, user_id) VALUES ($1, 'alice'), ($1, 'bob')", other
        )
    checker = TypingChecker(db, FakePublisher(), RETRY)
    for c in [cid, others[0], cid, others[1]]:  # others[0] is now the least recently typed in
        await checker.handle([StartTyping(user_id="bob", conversation_id=c, origin=ORIGIN)])
    assert list(checker.known.entries) == [cid, others[1]] and checker.known.members == 4
