"""The writer service: commands in (chat.commands.<p>), rows in Postgres, events out (chat.events).

Typing takes its own path (chat.typing -> chat.typing.events, writer/ephemeral.py): checked, never stored.

Each replica consumes the partitions the membership in Redis assigns it (shared/membership.py),
one channel per partition. For each batch (every AMQP message of one partition delivered so
far, each the commands of one gateway flush): one transaction stores them all, then the
resulting events are published with confirms, and only then are the messages acked. A crash
anywhere in between means redelivery, which the idempotent store absorbs. A command that cannot
be stored fails alone (shared/amqp.py isolates it): it is set aside in chat.dead and its sender
gets ``error``; the commands that travelled with it are stored as usual.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import prometheus_client
from aio_pika.abc import AbstractConnection
from aiohttp import web

from shared import envelope, topology, tracing
from shared.amqp import PREFETCH, Broker, PartitionGroup, Retryable, Unavailable
from shared.announce import Publisher, publish_events
from shared.db import TRANSIENT, Database, DatabaseUnavailable
from shared.envelope import Command
from shared.log import get_logger
from shared.membership import Membership
from shared.ops import ops_app
from shared.registry import redis_client
from shared.service import fatal
from shared.settings import WriterSettings
from shared.tasks import cancel_and_wait

from .ephemeral import TypingChecker
from .known import Known
from .plan import elsewhere, reject
from .store import store, targets

log = get_logger(__name__)

STORED = prometheus_client.Counter("chat_messages_stored_total", "Messages newly stored")
CHANGED = prometheus_client.Counter("chat_messages_changed_total", "Edits, deletes and reaction changes applied")
SENT_ON = prometheus_client.Counter(
    "chat_writer_commands_sent_on_total", "Commands on a message sent on to its conversation's partition"
)
DUPLICATES = prometheus_client.Counter("chat_messages_duplicate_total", "Sends that were already stored")
REJECTED = prometheus_client.Counter("chat_commands_rejected_total", "Commands refused", ["code"])
BATCH_SECONDS = prometheus_client.Histogram(
    "chat_writer_batch_seconds",
    "Store and announce one command batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
COMMAND_AGE = prometheus_client.Histogram(
    "chat_writer_command_age_seconds",
    "Hop latency: a send accepted by the gateway to the writer's batch that stores it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
BATCH_SIZE = prometheus_client.Histogram(
    "chat_writer_batch_commands", "Commands per batch", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
)
# Failures worth retrying in place. A unique violation means another writer stored the same key a
# moment ago (two partitions sharing a sender's tempMessageId): the retry reads it and decides.
RETRY = (DatabaseUnavailable, asyncpg.UniqueViolationError, *TRANSIENT)
# The conversations whose counter, members and read pointers a writer remembers between batches,
# so that a batch in them needs no read (writer/store.py): about 2 kB for a conversation of 5,
# ~20 MB at most. Forgotten whenever the partitions this writer holds change.
REMEMBERED = 10_000
REMEMBERED_MEMBERS = 100_000


class Writer:
    """The writer's consumer handler (shared.amqp.Handler): stores commands, announces events."""

    kind = "writer"

    def __init__(self, db: Database, publisher: Publisher, partitions: int) -> None:
        self.db = db
        self.publisher = publisher
        self.partitions = partitions
        self.known = Known(REMEMBERED, REMEMBERED_MEMBERS)

    def decode(self, body: bytes) -> list[Command]:
        return envelope.decode(envelope.Commands, body).items

    def encode(self, items: list[Command]) -> bytes:
        return envelope.encode(envelope.Commands(items=items))

    async def handle(self, commands: list[Command]) -> None:
        """Store ``commands`` atomically (writer/store.py), then announce the events (the caller acks).

        Takes ``{"type":"send-message","user_id":...,"conversation_id":...,"temp_message_id":...,
        "content":...,"origin":{...}}`` (and read-messages, typing); emits ``message-stored``,
        ``read-updated``, ``typing-started`` and ``command-rejected`` events to chat.events.
        """
        started = time.perf_counter()
        now = time.time()
        try:
            async with self.db.acquire() as conn:
                named = await targets(conn, commands)
                here, onward = elsewhere(commands, named, self.partitions)
                decided, events = await store(conn, here, self.known, named)
        except RETRY as exc:
            raise Retryable(f"database: {exc.__class__.__name__}") from None
        if tracing.enabled():
            events = [self._traced(e, now) for e in events]
        await self._announce(events)
        if onward:
            await self._send_on(onward)
        elapsed = time.perf_counter() - started
        for command in commands:  # once per stored batch: a retried or split batch is not counted twice
            if isinstance(command, envelope.SendMessage) and command.accepted_at is not None:
                COMMAND_AGE.observe(max(0.0, now - command.accepted_at))
        STORED.inc(decided.stored)
        DUPLICATES.inc(decided.duplicates)
        for event in events:
            if isinstance(event, envelope.CommandRejected):
                REJECTED.labels(event.code).inc()
        BATCH_SECONDS.observe(elapsed)
        BATCH_SIZE.observe(len(commands))
        CHANGED.inc(decided.changed)
        log.info(
            "batch_stored",
            commands=len(commands),
            stored=decided.stored,
            changed=decided.changed,
            duplicates=decided.duplicates,
            rejected=decided.rejected,
            sent_on=len(onward),
            ms=round(elapsed * 1000, 2),
        )

    @staticmethod
    def _traced(event: envelope.Event, started: float) -> envelope.Event:
        if not isinstance(event, envelope.MessageStored) or event.trace is None:
            return event
        span = tracing.record(
            "writer.store", event.trace, started, seq=event.seq, conversation_id=str(event.conversation_id)
        )
        return msgspec.structs.replace(event, trace=span)

    async def rejected(self, command: Command, reason: str) -> None:
        """``command`` could not be stored and was set aside: tell its sender, with its tempMessageId."""
        REJECTED.labels("unstorable").inc()
        await self._announce([reject(command, "invalid_frame", "this message could not be stored and was set aside")])

    async def _announce(self, events: list[envelope.Event]) -> None:
        try:
            await publish_events(self.publisher, events, self.partitions)
        except Unavailable as exc:
            raise Retryable(f"broker: {exc}") from None

    async def _send_on(self, commands: list[Command]) -> None:
        """Commands on messages whose conversation lives in another partition (messages of an
        earlier version, whose ids carry no partition): into that partition, in order with its
        messages. Confirmed before the batch is acked; sent again, they change nothing twice."""
        grouped: dict[int, list[Command]] = defaultdict(list)
        for command in commands:
            grouped[topology.command_partition(command, self.partitions)].append(command)
        try:
            await asyncio.gather(
                *(
                    self.publisher.publish(topology.COMMANDS, str(p), envelope.encode(envelope.Commands(items=items)))
                    for p, items in grouped.items()
                )
            )
        except Unavailable as exc:
            raise Retryable(f"broker: {exc}") from None
        SENT_ON.inc(len(commands))


def create_app(settings: WriterSettings) -> web.Application:
    app, readiness = ops_app("writer")
    db = Database(settings.database_url, max_size=4, statement_cache=settings.db_statement_cache)
    redis = redis_client(settings.redis)

    async def setup(connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await topology.declare_events(channel, settings.partitions)
        await topology.declare_commands(channel, settings.partitions)
        await topology.declare_typing(channel, topology.TYPING_EVENTS)
        await channel.close()
        await broker.consume_partitions(connection, group)
        typing_channel = await connection.channel()
        queue = await topology.declare_typing(typing_channel, topology.TYPING)
        await typing_channel.set_qos(prefetch_count=PREFETCH)  # after declaring: a refused declare reopens it
        await broker.consume(typing_channel, queue, typing)

    broker = Broker(settings.amqp_urls, name=f"writer:{settings.instance_id}", setup=setup, on_fatal=fatal)
    writer = Writer(db, broker, settings.partitions)
    typing = TypingChecker(db, broker, RETRY)
    # what it remembers of its conversations may be stale once another writer held them
    group = PartitionGroup(broker, topology.command_queue, writer, on_change=writer.known.clear)
    membership = Membership(
        redis, "writer", settings.instance_id, settings.partitions, group.want, consuming=lambda: broker.ready
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        db.start()
        broker.start()
        beat = asyncio.create_task(membership.run(), name="membership")
        yield
        log.info("shutdown_started")
        await cancel_and_wait(beat)
        await membership.leave()  # the others take our partitions at their next beat...
        await broker.stop_consuming()  # ...and get each one as we finish its batch and close its channel
        await broker.close()
        await db.close()
        await redis.aclose()
        log.info("shutdown_finished")

    readiness.checks.update(database=db.ping, broker=broker.check)
    app.cleanup_ctx.append(resources)
    return app
