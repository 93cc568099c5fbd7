"""The notifier service: events in (chat.events.<p>), one delivery per gateway instance out.

For each batch (every AMQP message delivered so far, each a batch of events): look up every
recipient's connections in Redis with one script call, plan the deliveries (routing.py), publish one Deliveries batch to each
gateway instance with confirms, then ack. If Redis or the broker fails, the batch is retried
in place, so nothing is skipped; a gateway that is gone (its queue deleted) is skipped.
"""

from __future__ import annotations

import time
from functools import partial

import prometheus_client
from aio_pika.abc import AbstractConnection
from aiohttp import web
from redis.asyncio import Redis

from shared import envelope, log as logging, topology
from shared.amqp import Broker, Retryable, Unavailable, Unroutable
from shared.ops import ops_app
from shared.registry import REDIS_ERRORS, Registry, now_ms, redis_client, registry_trusted
from shared.settings import Settings

from .routing import BROADCAST, plan, users_of

log = logging.get(__name__)
PREFETCH = 64

DELIVERIES = prometheus_client.Counter("chat_deliveries_published_total", "Delivery batches sent to gateways", ["mode"])
FRAMES = prometheus_client.Counter("chat_frames_routed_total", "Frames routed to gateway instances")
BATCH_SECONDS = prometheus_client.Histogram(
    "chat_notifier_batch_seconds", "Route and publish one event batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)


class Notifier:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.registry = Registry(redis)
        self.broker = Broker(settings.amqp_url or "", name=f"notifier:{settings.instance_id}", setup=self.setup)

    async def setup(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        await topology.declare_deliveries(channel)
        queues = await topology.declare_events(channel, self.settings.partitions)
        await self.broker.consume(queues, partial(envelope.decode, envelope.Events), self.handle, max_batch=PREFETCH)

    async def handle(self, batches: list[envelope.Events]) -> None:
        """Route everything that has arrived: one Redis round trip, one publish per gateway."""
        events = [event for batch in batches for event in batch.items]
        started = time.perf_counter()
        try:
            located, since = await self.registry.instances(users_of(events))
        except REDIS_ERRORS as exc:
            raise Retryable(f"redis: {exc.__class__.__name__}") from None
        trusted = registry_trusted(since, now_ms())
        deliveries = plan(events, located, trusted)
        for instance, items in deliveries.items():
            body_out = envelope.encode(envelope.Deliveries(items=items))
            try:
                if instance is BROADCAST:
                    await self.broker.publish(topology.BROADCAST, "", body_out)
                else:
                    await self.broker.publish(topology.DELIVERIES, instance, body_out, mandatory=True)
            except Unroutable:
                log.info("gateway_gone", gateway=instance, frames=len(items))
                continue
            except Unavailable as exc:
                raise Retryable(f"broker: {exc}") from None
            DELIVERIES.labels("broadcast" if instance is BROADCAST else "direct").inc()
            FRAMES.inc(len(items))
        elapsed = time.perf_counter() - started
        BATCH_SECONDS.observe(elapsed)
        log.info("events_routed", messages=len(batches), events=len(events), gateways=len(deliveries), trusted=trusted,
                 ms=round(elapsed * 1000, 2))


def create_app(settings: Settings) -> web.Application:
    app, readiness = ops_app("notifier")
    redis = redis_client(settings.redis_url or "")
    notifier = Notifier(settings, redis)

    async def resources(app: web.Application):  # type: ignore[no-untyped-def]
        notifier.broker.start()
        yield
        await notifier.broker.stop_consuming()
        await notifier.broker.close()
        await redis.aclose()

    readiness.checks.update(broker=notifier.broker.check, redis=notifier.registry.check)
    app.cleanup_ctx.append(resources)
    return app
