"""The query service app (REST, contract section 3)."""

from __future__ import annotations

from aiohttp import web

from shared.amqp import Broker
from shared.auth import TokenVerifier
from shared.db import Database
from shared.ops import access_log, add_routes
from shared.settings import Settings


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[access_log], client_max_size=64 * 1024)
    readiness = add_routes(app, "query")
    db = Database(settings.database_url or "")
    broker = Broker(settings.amqp_url or "", name=f"query:{settings.instance_id}")
    assert settings.jwt is not None
    verifier = TokenVerifier(settings.jwt)

    async def resources(app: web.Application):  # type: ignore[no-untyped-def]
        db.start()
        broker.start()
        yield
        await broker.close()
        await db.close()
        await verifier.close()

    async def draining(app: web.Application) -> None:
        readiness.draining = True

    async def broker_ready() -> bool:
        return broker.ready

    readiness.checks.update(database=db.ping, broker=broker_ready)
    app.on_shutdown.append(draining)
    app.cleanup_ctx.append(resources)
    return app
