"""What every service serves for operators: /healthz, /readyz, /metrics, and one log line a request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import stalls
from .log import get_logger

log = get_logger(__name__)
Check = Callable[[], Awaitable[bool]]

HTTP_REQUESTS = prometheus_client.Counter(
    "chat_http_requests_total", "HTTP requests answered", ["service", "route", "status"]
)
HTTP_SECONDS = prometheus_client.Histogram(
    "chat_http_request_seconds",
    "HTTP request latency",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


@dataclass
class Readiness:
    """Named dependency checks plus a draining flag; ready when not draining and all checks pass."""

    checks: dict[str, Check] = field(default_factory=dict)
    draining: bool = False

    async def report(self) -> tuple[bool, dict[str, bool]]:
        names = list(self.checks)
        results = await asyncio.gather(*(_bounded(self.checks[n]) for n in names))
        status = dict(zip(names, results))
        return (not self.draining and all(results)), status


async def _bounded(check: Check) -> bool:
    try:
        return bool(await asyncio.wait_for(check(), 2.0))
    except Exception:
        return False


READINESS = web.AppKey("readiness", Readiness)
SERVICE = web.AppKey("service", str)


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz`` -> ``{"status": "ok"}``: the process is alive."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz`` -> 200 ``{"ready": true, "checks": {...}}``, or 503 with ``ready: false``."""
    readiness = request.app[READINESS]
    ready, checks = await readiness.report()
    body = {"ready": ready, "draining": readiness.draining, "checks": checks}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format."""
    body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


class AccessLog(AbstractAccessLogger):
    """One JSON line per request: method, route, status and duration. Never the query string.

    aiohttp calls it once a request is answered (a WebSocket's when it closes). A middleware
    would do the same but hold a coroutine frame for as long as each request runs: for a
    gateway, the whole life of every socket."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        match_info = getattr(request, "match_info", None)
        resource = match_info.route.resource if match_info is not None else None
        route = resource.canonical if resource is not None else "unmatched"
        if route in ("/healthz", "/readyz", "/metrics"):
            return
        service = request.app.get(SERVICE, "chat") if isinstance(request, web.Request) else "chat"
        key = (service, route, response.status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds its key: once per route and status
            children = self._children[key] = (
                HTTP_REQUESTS.labels(service, route, str(response.status)),
                HTTP_SECONDS.labels(service, route),
            )
        children[0].inc()
        children[1].observe(time)
        log.info(
            "http_request",
            method=request.method,
            route=route,
            path=request.path,
            status=response.status,
            ms=round(time * 1000, 2),
        )


ACCESS_LOGGER = logging.getLogger("chat.access")  # aiohttp's switch: AccessLog writes through structlog


def add_routes(app: web.Application, service: str, *, ops_port: int = 0, host: str = "0.0.0.0") -> Readiness:
    """Mount the three operator routes and return the Readiness to fill with checks.

    With ``ops_port`` they are served on that port only, by a second listener that lives as
    long as ``app``: a public service (gateway, query) then keeps /metrics off its public port.
    """
    readiness = Readiness()
    app[READINESS] = readiness
    app[SERVICE] = service

    async def draining(app: web.Application) -> None:  # first step of every shutdown: not ready
        readiness.draining = True

    app.on_shutdown.append(draining)
    app.cleanup_ctx.append(stalls.watch)
    target = app
    if ops_port:
        target = web.Application()
        target[READINESS] = readiness
        target[SERVICE] = service

        async def listener(app: web.Application) -> AsyncIterator[None]:
            runner = web.AppRunner(target, access_log_class=AccessLog, access_log=ACCESS_LOGGER)
            await runner.setup()
            await web.TCPSite(runner, host, ops_port).start()
            yield
            await runner.cleanup()

        app.cleanup_ctx.append(listener)
    target.router.add_get("/healthz", healthz)
    target.router.add_get("/readyz", readyz)
    target.router.add_get("/metrics", metrics)
    return readiness


def ops_app(service: str) -> tuple[web.Application, Readiness]:
    """A bare app with just the operator routes (writer and notifier serve only these)."""
    app = web.Application()
    return app, add_routes(app, service)
