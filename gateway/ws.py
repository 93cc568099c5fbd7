"""The WebSocket endpoint (contract section 2)."""

from __future__ import annotations

import asyncio
import time

import prometheus_client
from aiohttp import WSMsgType, web

from shared import frames, log as logging
from shared.auth import AuthError, AuthUnavailable
from shared.envelope import Origin, ReadMessages, SendMessage, StartTyping
from shared.registry import REDIS_ERRORS

from .hub import Connection
from .state import GATEWAY, Gateway

log = logging.get(__name__)
MAX_FRAME = 64 * 1024
HEARTBEAT_SECONDS = 30.0
SEND_RATE = 20.0  # sustained sends per second per connection
SEND_BURST = 100.0
TYPING_INTERVAL = 1.0

FRAMES_IN = prometheus_client.Counter("chat_gateway_frames_received_total", "Client frames", ["action"])
FRAME_ERRORS = prometheus_client.Counter("chat_gateway_frame_errors_total", "Client frames refused", ["code"])


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /?Authorization=<jwt>`` (or ``/ws``): upgrade to the chat WebSocket.

    Takes frames such as ``{"action":"send-message","tempMessageId":"t1","conversationId":"<uuid>",
    "content":"hi"}``; emits frames such as ``{"type":"new-message","messageId":...,"seq":1,...}``
    and ``{"type":"error","code":"empty_content","message":...,"action":...,"tempMessageId":...}``.
    """
    gw: Gateway = request.app[GATEWAY]
    origin = request.headers.get("Origin")
    if gw.settings.allowed_origins and origin is not None and origin.rstrip("/") not in gw.settings.allowed_origins:
        return _error_response(403, "forbidden_origin", "origin not allowed")
    if gw.readiness.draining:
        return _error_response(503, "unavailable", "gateway is shutting down")
    try:
        user_id = await gw.verifier.verify(request.query.get("Authorization"))
    except AuthError as exc:
        return _error_response(401, "unauthorized", str(exc))
    except AuthUnavailable as exc:
        return _error_response(503, "unavailable", str(exc))

    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=HEARTBEAT_SECONDS)
    if not ws.can_prepare(request).ok:
        return _error_response(400, "not_websocket", "expected a WebSocket upgrade")
    conn = Connection(ws, user_id)
    try:
        await asyncio.wait_for(gw.registry.register(gw.settings.instance_id, [(user_id, conn.id)]), 3)
    except REDIS_ERRORS as exc:
        log.warning("ws_register_failed", error=exc.__class__.__name__)
        return _error_response(503, "unavailable", "connection registry unavailable, retry")
    await ws.prepare(request)
    gw.hub.add(conn)
    conn.start()
    opened = time.perf_counter()
    received = 0
    bucket = TokenBucket(SEND_RATE, SEND_BURST)
    typing_at: dict[str, float] = {}
    origin_ref = Origin(gw.settings.instance_id, conn.id)
    log.debug("ws_opened", conn=conn.id)
    try:
        async for msg in ws:  # the receive loop also processes pongs (aiohttp #10544)
            if msg.type == WSMsgType.TEXT:
                received += 1
                handle_frame(gw, conn, msg.data, origin_ref, bucket, typing_at)
            elif msg.type == WSMsgType.BINARY:
                FRAME_ERRORS.labels("invalid_frame").inc()
                conn.push(frames.error("invalid_frame", "frames must be JSON text"))
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        gw.hub.remove(conn)
        await conn.stop()
        try:
            await asyncio.wait_for(gw.registry.unregister(gw.settings.instance_id, [(user_id, conn.id)]), 2)
        except REDIS_ERRORS:
            pass  # the lease lapses on its own
        log.info("ws_closed", conn=conn.id, user_frames=received, sent=conn.sent, close_code=ws.close_code,
                 seconds=round(time.perf_counter() - opened, 3))
    return ws


def handle_frame(gw: Gateway, conn: Connection, text: str, origin: Origin, bucket: TokenBucket,
                 typing_at: dict[str, float]) -> None:
    try:
        frame = frames.parse(text)
    except frames.FrameError as exc:
        FRAME_ERRORS.labels(exc.code).inc()
        conn.push(frames.error(exc.code, exc.message, action=exc.action, temp_message_id=exc.temp_message_id))
        return
    if isinstance(frame, frames.HeartbeatFrame):
        FRAMES_IN.labels("heartbeat").inc()
        return
    if isinstance(frame, frames.SendFrame):
        FRAMES_IN.labels("send-message").inc()
        if not bucket.take():
            FRAME_ERRORS.labels("rate_limited").inc()
            conn.push(frames.error("rate_limited", "too many messages, slow down", action="send-message",
                                   temp_message_id=frame.temp_message_id))
            return
        temp_id = frame.temp_message_id
        gw.publisher.submit(
            SendMessage(user_id=conn.user_id, conversation_id=frame.conversation_id, temp_message_id=temp_id,
                        content=frame.content, origin=origin),
            lambda reason: conn.push(frames.error("unavailable", "could not accept the message, retry",
                                                  action="send-message", temp_message_id=temp_id)),
        )
    elif isinstance(frame, frames.ReadFrame):
        FRAMES_IN.labels("read-messages").inc()
        gw.publisher.submit(
            ReadMessages(user_id=conn.user_id, conversation_id=frame.conversation_id, origin=origin),
            lambda reason: conn.push(frames.error("unavailable", "could not mark as read, retry",
                                                  action="read-messages")),
        )
    elif isinstance(frame, frames.TypingFrame):
        FRAMES_IN.labels("typing").inc()
        key = str(frame.conversation_id)
        now = time.monotonic()
        if now - typing_at.get(key, 0.0) < TYPING_INTERVAL:
            return  # ephemeral: extra typing frames are simply dropped
        typing_at[key] = now
        gw.publisher.submit(StartTyping(user_id=conn.user_id, conversation_id=frame.conversation_id, origin=origin))
