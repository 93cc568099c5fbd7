"""The WebSocket endpoint (docs/protocol.md sections 2 and 5): authenticate, admit, then read frames."""

from __future__ import annotations

import asyncio
import time

from aiohttp import WSMsgType, web

from shared.auth import AuthError, AuthUnavailable
from shared.log import get_logger
from shared.registry import REDIS_ERRORS

from .hub import Connection
from .leases import SERVICE_RESTART
from .liveness import pong
from .session import Session
from .state import GATEWAY, Gateway

log = get_logger(__name__)
MAX_FRAME = 64 * 1024


def _error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def _unregister(gw: Gateway, conn: Connection) -> None:
    try:
        await asyncio.wait_for(gw.registry.unregister(conn.lease, conn.user_id, conn.id), 2)
    except REDIS_ERRORS:
        gw.lease.unregister_later(conn)


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /?Authorization=<jwt>`` (or ``/ws``): upgrade to the chat WebSocket.

    Refused before the upgrade: 401 ``unauthorized``, 403 ``forbidden_origin``, 429
    ``too_many_connections`` (the user holds ``CHAT_MAX_CONNECTIONS_PER_USER`` sockets across
    every gateway), 503 ``unavailable`` (shutting down, or not connected to the broker or Redis).
    Frames: see :meth:`gateway.session.Session.handle`; pings and pongs count against the same
    per-connection frame budget.
    """
    gw: Gateway = request.app[GATEWAY]
    origin = request.headers.get("Origin")
    if gw.settings.allowed_origins and origin is not None and origin.rstrip("/") not in gw.settings.allowed_origins:
        return _error_response(403, "forbidden_origin", "origin not allowed")
    if gw.readiness.draining:
        return _error_response(503, "unavailable", "gateway is shutting down")
    if not gw.broker.ready:
        # its deliveries queue goes with its broker connection: a socket accepted now could miss
        # events routed to the queue before it is declared again
        return _error_response(503, "unavailable", "gateway is reconnecting to the broker, retry")
    try:
        identity = await gw.verifier.identify(request.query.get("Authorization"))
    except AuthError as exc:
        return _error_response(401, "unauthorized", str(exc))
    except AuthUnavailable as exc:
        return _error_response(503, "unavailable", str(exc))

    # No permessage-deflate: chat frames are small, a deflate context costs each socket ~300 KB,
    # and an uncompressed frame is built once for all its recipients (hub.text_frame).
    # No heartbeat of aiohttp's (a timer per socket): gateway/liveness.py sweeps every socket at once.
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, compress=False, autoping=False)
    if not ws.can_prepare(request).ok:
        return _error_response(400, "not_websocket", "expected a WebSocket upgrade")
    conn = Connection(ws, identity.user_id, gw.lease.id)
    limit = gw.settings.limits.max_connections_per_user
    try:
        admitted = await asyncio.wait_for(gw.registry.admit(conn.lease, identity.user_id, conn.id, limit), 3)
    except REDIS_ERRORS as exc:
        log.warning("ws_register_failed", error=exc.__class__.__name__)
        await _unregister(gw, conn)  # a timeout may have come after Redis admitted it
        return _error_response(503, "unavailable", "connection registry unavailable, retry")
    if admitted < 0:
        return _error_response(503, "unavailable", "gateway is joining the connection registry, retry")
    if not admitted:
        return _error_response(429, "too_many_connections", f"at most {limit} open connections per user")
    try:
        await ws.prepare(request)
    except BaseException:
        await _unregister(gw, conn)
        raise
    session = Session(gw, conn, gw.hub.add(conn), identity)
    conn.start(request.transport)
    session.start()
    opened = time.perf_counter()
    try:
        if conn.lease != gw.lease.id:  # the lease was replaced since admission (rare)
            try:
                await asyncio.wait_for(gw.lease.adopt(conn), 3)
            except REDIS_ERRORS:
                conn.close_soon(SERVICE_RESTART, "connection registry unavailable")
        while True:  # not ``async for``: its __anext__ frame would stay with every idle socket
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            conn.heard = True
            if msg.type == WSMsgType.TEXT:
                session.handle(msg.data)
            elif msg.type == WSMsgType.BINARY:
                session.binary()
            elif msg.type in (WSMsgType.PING, WSMsgType.PONG):
                if session.within_budget() and msg.type == WSMsgType.PING:  # a ping flood costs its sender
                    conn.push_wire(pong(msg.data))
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        gw.hub.remove(conn)
        await session.stop()
        await conn.stop()
        await _unregister(gw, conn)
        log.info(
            "ws_closed",
            conn=conn.id,
            user_frames=session.received,
            sent=conn.sent,
            close_code=ws.close_code,
            seconds=round(time.perf_counter() - opened, 3),
        )
    return ws
