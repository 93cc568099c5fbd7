"""The gateway app: WebSocket at / and /ws, deliveries in from its own queue, leases in Redis.

Shutdown order (on SIGTERM): not ready -> no new sockets -> publish pending commands ->
close sockets with 1001 -> stop consuming deliveries -> drop leases -> close broker and Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import prometheus_client
from aio_pika.abc import AbstractConnection
from aiohttp import web

from shared import topology
from shared.amqp import PREFETCH, Broker
from shared.auth import TokenVerifier
from shared.log import get_logger
from shared.ops import add_routes
from shared.registry import REDIS_ERRORS, Registry, redis_client
from shared.service import fatal
from shared.settings import GatewaySettings
from shared.tasks import cancel_and_wait

from .delivery import Deliverer
from .expiry import Expiries, close_expired
from .hub import Hub
from .leases import SERVICE_RESTART, Lease, renew_leases
from .liveness import keep_alive
from .publisher import CommandPublisher
from .state import GATEWAY, Gateway
from .ws import websocket

log = get_logger(__name__)
BROKER_LOST_CLOSES = prometheus_client.Counter(
    "chat_gateway_broker_lost_closes_total",
    "Times every socket was closed with 1012 because the broker connection was lost",
)


ASYNCAPI = Path(__file__).parent / "asyncapi.yaml"


async def asyncapi(request: web.Request) -> web.FileResponse:
    """``GET /asyncapi.yaml``: the AsyncAPI 3 document of the frames and the broker's bodies."""
    return web.FileResponse(ASYNCAPI, headers={"Content-Type": "application/yaml"})


def create_app(settings: GatewaySettings) -> web.Application:
    app = web.Application()
    readiness = add_routes(app, "gateway", ops_port=settings.ops_port, host=settings.host)
    redis = redis_client(settings.redis)
    hub = Hub(settings.limits)

    deliverer = Deliverer(hub)

    async def setup(connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await topology.declare_commands(channel, settings.partitions)
        await topology.declare_typing(channel, topology.TYPING)
        queue = await topology.declare_gateway_queue(channel, settings.instance_id)
        await channel.set_qos(prefetch_count=PREFETCH)  # after declaring: a refused declare reopens the channel
        await broker.consume(channel, queue, deliverer)

    def broker_lost() -> None:
        # Deliveries are transient (docs/events.md): a broker that restarts drops those still
        # queued for this gateway, so its sockets may have missed events. Their clients reconnect
        # and catch up over REST rather than wait for what may never come.
        if hub.by_id:
            BROKER_LOST_CLOSES.inc()
            log.warning("broker_lost_closing_sockets", connections=len(hub.by_id))
            hub.close_soon_all(SERVICE_RESTART, "broker connection lost")

    broker = Broker(
        settings.amqp_urls,
        name=f"gateway:{settings.instance_id}",
        setup=setup,
        on_fatal=fatal,
        on_lost=broker_lost,
    )
    registry = Registry(redis)
    gw = Gateway(
        settings=settings,
        readiness=readiness,
        # a socket's token is checked once anyway: remembering tokens would cost each socket ~0.5 KB
        verifier=TokenVerifier(settings.jwt, remembered=0),
        registry=registry,
        broker=broker,
        publisher=CommandPublisher(broker, settings.partitions, linger=settings.flush_linger_ms / 1000),
        hub=hub,
        lease=Lease(registry, hub, settings.instance_id),
        expiries=Expiries(),
    )
    app[GATEWAY] = gw

    async def resources(app: web.Application) -> AsyncIterator[None]:
        broker.start()
        gw.publisher.start()
        refresher = asyncio.create_task(renew_leases(gw.lease), name="lease-renewal")
        pinger = asyncio.create_task(keep_alive(hub, settings.heartbeat_seconds), name="liveness")
        closer = asyncio.create_task(close_expired(gw.expiries), name="token-expiry")
        yield
        await cancel_and_wait(closer)
        await cancel_and_wait(pinger)
        await cancel_and_wait(refresher)
        await broker.stop_consuming()
        try:
            await asyncio.wait_for(gw.lease.release(), 2)
        except REDIS_ERRORS:
            pass
        await broker.close()
        await redis.aclose()
        await gw.verifier.close()

    async def shutdown(app: web.Application) -> None:
        await gw.publisher.close()  # what users sent before shutdown still reaches the writer
        await hub.close_all()  # 1001 going away

    readiness.checks.update(broker=broker.check, redis=gw.lease.check)
    app.on_shutdown.append(shutdown)
    app.cleanup_ctx.append(resources)
    app.router.add_get("/asyncapi.yaml", asyncapi)
    app.router.add_get("/", websocket)
    app.router.add_get("/ws", websocket)
    return app
