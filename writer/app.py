"""The writer service: commands in (chat.commands.<p>), rows in Postgres, events out (chat.events).

For each batch (every AMQP message delivered so far, each the commands of one gateway flush):
one transaction stores them all, then the resulting events are published with confirms, and only
then are the messages acked. A crash anywhere in between means redelivery, which the idempotent store absorbs.
"""

from __future__ import annotations

import time
from functools import partial

import prometheus_client
from aio_pika.abc import AbstractConnection
from aiohttp import web

from shared import envelope, log as logging, topology
from shared.amqp import Broker, Retryable, Unavailable
from shared.db import TRANSIENT, Database, DatabaseUnavailable
from shared.events import publish_events
from shared.ops import ops_app
from shared.settings import Settings

from .store import store

log = logging.get(__name__)
PREFETCH = 64

STORED = prometheus_client.Counter("chat_messages_stored_total", "Messages newly stored")
DUPLICATES = prometheus_client.Counter("chat_messages_duplicate_total", "Sends that were already stored")
REJECTED = prometheus_client.Counter("chat_commands_rejected_total", "Commands refused", ["code"])
BATCH_SECONDS = prometheus_client.Histogram(
    "chat_writer_batch_seconds", "Store and announce one command batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = prometheus_client.Histogram("chat_writer_batch_commands", "Commands per batch",
                                         buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))


class Writer:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.broker = Broker(settings.amqp_url or "", name=f"writer:{settings.instance_id}", setup=self.setup)

    async def setup(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        await topology.declare_events(channel, self.settings.partitions)
        queues = await topology.declare_commands(channel, self.settings.partitions)
        await self.broker.consume(queues, partial(envelope.decode, envelope.Commands), self.handle, max_batch=PREFETCH)

    async def handle(self, batches: list[envelope.Commands]) -> None:
        """Store everything that has arrived in one transaction, announce it, then (caller) ack."""
        commands = [command for batch in batches for command in batch.items]
        started = time.perf_counter()
        try:
            async with self.db.acquire() as conn, conn.transaction():
                outcome = await store(conn, commands)
        except (DatabaseUnavailable, *TRANSIENT) as exc:
            raise Retryable(f"database: {exc.__class__.__name__}") from None
        try:
            await publish_events(self.broker, outcome.events, self.settings.partitions)
        except Unavailable as exc:
            raise Retryable(f"broker: {exc}") from None
        elapsed = time.perf_counter() - started
        STORED.inc(outcome.stored)
        DUPLICATES.inc(outcome.duplicates)
        for event in outcome.events:
            if isinstance(event, envelope.CommandRejected):
                REJECTED.labels(event.code).inc()
        BATCH_SECONDS.observe(elapsed)
        BATCH_SIZE.observe(len(commands))
        log.info("batch_stored", messages=len(batches), commands=len(commands), stored=outcome.stored, duplicates=outcome.duplicates,
                 rejected=outcome.rejected, ms=round(elapsed * 1000, 2))


def create_app(settings: Settings) -> web.Application:
    app, readiness = ops_app("writer")
    db = Database(settings.database_url or "", max_size=4)
    writer = Writer(settings, db)

    async def resources(app: web.Application):  # type: ignore[no-untyped-def]
        db.start()
        writer.broker.start()
        yield
        await writer.broker.stop_consuming()  # finish the batch in hand, then stop
        await writer.broker.close()
        await db.close()

    readiness.checks.update(database=db.ping, broker=writer.broker.check)
    app.cleanup_ctx.append(resources)
    return app
