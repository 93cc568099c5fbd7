"""The notifier service: events in (chat.events.<p>), one delivery per gateway instance out.

Typing arrives on its own queue (chat.typing.events, transient, any notifier takes any message).

Each replica consumes the partitions the membership in Redis assigns it (shared/membership.py).
For each batch (every AMQP message of one partition delivered so far, each a batch of events):
look up every recipient's connections in Redis with one script call (which also marks the users
whose reads the events change as fresh, for the query service's standbys), plan the deliveries
(routing.py), publish one Deliveries batch to each gateway instance with confirms, then ack. If
Redis or the broker fails, the batch is retried in place, so nothing is skipped; a gateway that
is gone (its queue deleted) is skipped; an event that makes routing fail is set aside alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import prometheus_client
from aio_pika.abc import AbstractConnection
from aiohttp import web

from shared import envelope, topology, tracing
from shared.amqp import PREFETCH, Broker, PartitionGroup, Poison, Retryable, Unavailable, Unroutable
from shared.announce import Publisher
from shared.log import get_logger
from shared.membership import Membership
from shared.ops import ops_app
from shared.registry import REDIS_ERRORS, Registry, now_ms, redis_client, registry_trusted
from shared.service import fatal
from shared.settings import NotifierSettings
from shared.tasks import cancel_and_wait

from .routing import BROADCAST, plan, touched, users_of

log = get_logger(__name__)

DELIVERIES = prometheus_client.Counter("chat_deliveries_published_total", "Delivery batches sent to gateways", ["mode"])
FRAMES = prometheus_client.Counter("chat_frames_routed_total", "Frames routed to gateway instances")
EVENT_AGE = prometheus_client.Histogram(
    "chat_notifier_event_age_seconds",
    "Hop latency: a send accepted by the gateway to the notifier's batch that routes it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
BATCH_SECONDS = prometheus_client.Histogram(
    "chat_notifier_batch_seconds",
    "Route and publish one event batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)


class Notifier:
    """The notifier's consumer handler (shared.amqp.Handler): routes events to gateway instances."""

    kind = "notifier"

    def __init__(self, registry: Registry, publisher: Publisher) -> None:
        self.registry = registry
        self.publisher = publisher

    def decode(self, body: bytes) -> list[envelope.Event]:
        return envelope.decode(envelope.Events, body).items

    def encode(self, items: list[envelope.Event]) -> bytes:
        return envelope.encode(envelope.Events(items=items))

    async def handle(self, events: list[envelope.Event]) -> None:
        """Route ``events``: one Redis round trip, one publish per gateway.

        Takes ``{"type":"message-stored",...,"participants":[...]}`` and the other events; emits
        ``{"v":1,"items":[["<frame json>",["<user>",...],null],...]}`` to each gateway holding a
        recipient (chat.deliveries, routing key = the gateway's instance id).
        """
        started = time.perf_counter()
        now = time.time()
        try:
            located, since = await self.registry.instances(users_of(events), touched(events))
        except REDIS_ERRORS as exc:
            raise Retryable(f"redis: {exc.__class__.__name__}") from None
        trusted = registry_trusted(since, now_ms())
        if tracing.enabled():
            events = [
                msgspec.structs.replace(e, trace=tracing.record("notifier.route", e.trace, now, seq=e.seq))
                if isinstance(e, envelope.MessageStored) and e.trace is not None
                else e
                for e in events
            ]
        deliveries = plan(events, located, trusted)
        # one publish per gateway, all at once: waiting for each confirm in turn cost a round trip each
        results = await asyncio.gather(
            *(self._deliver(instance, items) for instance, items in deliveries.items()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Unavailable):
                raise Retryable(f"broker: {result}") from None
            if isinstance(result, BaseException):
                raise result
        for event in events:  # once per routed batch: a retried or split batch is not counted twice
            if isinstance(event, envelope.MessageStored) and event.accepted_at is not None:
                EVENT_AGE.observe(max(0.0, now - event.accepted_at))
        elapsed = time.perf_counter() - started
        BATCH_SECONDS.observe(elapsed)
        log.info(
            "events_routed", events=len(events), gateways=len(deliveries), trusted=trusted, ms=round(elapsed * 1000, 2)
        )

    async def _deliver(self, instance: str | None, items: list[envelope.Delivery]) -> None:
        body = envelope.encode(envelope.Deliveries(items=items))
        try:
            if instance is BROADCAST:
                await self.publisher.publish(topology.BROADCAST, "", body, persistent=False)
            else:
                await self.publisher.publish(topology.DELIVERIES, instance, body, mandatory=True, persistent=False)
        except Unroutable:
            # its queue is gone, so its broker connection is gone (the queue is exclusive to it): the
            # gateway crashed, or closed its sockets with 1012 and is reconnecting
            log.info("gateway_gone", gateway=instance, frames=len(items))
            return
        DELIVERIES.labels("broadcast" if instance is BROADCAST else "direct").inc()
        FRAMES.inc(len(items))

    async def rejected(self, event: envelope.Event, reason: str) -> None:
        """An event that cannot be routed is set aside (chat.dead has it); the others went on."""


class TypingRouter(Notifier):
    """``chat.typing.events``' consumer handler: routes typing like any event, and nothing else."""

    kind = "typing"

    async def handle(self, events: list[envelope.Event]) -> None:
        """Takes ``typing-started`` and ``command-rejected`` (a typist who is not a participant);
        emits ``typing`` and ``error`` frames as :meth:`Notifier.handle` does."""
        if any(not isinstance(e, envelope.TypingStarted | envelope.CommandRejected) for e in events):
            # this path is never stored or ordered: a message here would reach people unstored
            raise Poison(f"only typing travels {topology.TYPING_EVENTS}")
        await super().handle(events)


def create_app(settings: NotifierSettings) -> web.Application:
    app, readiness = ops_app("notifier")
    redis = redis_client(settings.redis)

    async def setup(connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await topology.declare_deliveries(channel)
        await topology.declare_events(channel, settings.partitions)
        await channel.close()
        await broker.consume_partitions(connection, group)
        typing_channel = await connection.channel()
        queue = await topology.declare_typing(typing_channel, topology.TYPING_EVENTS)
        await typing_channel.set_qos(prefetch_count=PREFETCH)  # after declaring: a refused declare reopens it
        await broker.consume(typing_channel, queue, typing)

    broker = Broker(settings.amqp_urls, name=f"notifier:{settings.instance_id}", setup=setup, on_fatal=fatal)
    notifier = Notifier(Registry(redis), broker)
    typing = TypingRouter(notifier.registry, broker)
    group = PartitionGroup(broker, topology.event_queue, notifier)
    # without Redis a notifier cannot route: cut off from it, it lets its partitions go to replicas that can
    membership = Membership(
        redis,
        "notifier",
        settings.instance_id,
        settings.partitions,
        group.want,
        works_without_redis=False,
        consuming=lambda: broker.ready,
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        broker.start()
        beat = asyncio.create_task(membership.run(), name="membership")
        yield
        log.info("shutdown_started")
        await cancel_and_wait(beat)
        await membership.leave()
        await broker.stop_consuming()
        await broker.close()
        await redis.aclose()
        log.info("shutdown_finished")

    readiness.checks.update(broker=broker.check, redis=notifier.registry.check)
    app.cleanup_ctx.append(resources)
    return app
