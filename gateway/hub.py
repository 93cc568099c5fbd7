"""This gateway's open connections, indexed by user and by connection id."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Iterator

import prometheus_client
from aiohttp import WSCloseCode, web

from shared.log import get_logger
from shared.settings import Limits

from .limits import UserLimits

log = get_logger(__name__)
# Bytes in the transport's buffer (beyond what the kernel took) above which a socket's reader counts as behind.
BACKLOG_BYTES = 64 * 1024
RETRY_SECONDS = 0.05
# Bytes waiting here for a reader that is behind before it counts as unable to keep up.
OUTBOX_BYTES = 1 << 20
TRY_AGAIN_LATER = 1013
CLOSE_TIMEOUT = 5.0

CONNECTIONS = prometheus_client.Gauge("chat_gateway_connections", "Open WebSocket connections")
FRAMES_SENT = prometheus_client.Counter("chat_gateway_frames_sent_total", "Frames written to sockets")
SLOW_CLOSED = prometheus_client.Counter(
    "chat_gateway_slow_consumers_closed_total", "Connections closed with 1013 because they could not keep up"
)


def text_frame(payload: str) -> bytes:
    """``payload`` as one unmasked, uncompressed WebSocket text frame (RFC 6455 section 5.2).

    A server frame is the same bytes for every socket, so a frame for five recipients is built
    once and written five times (the gateway negotiates no compression, see ws.py).
    """
    data = payload.encode()
    size = len(data)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + data


class Connection:
    """One socket. Frames pushed during one turn of the event loop (a delivery batch) are written
    together, in one ``write``, right after it; nothing waits for the socket. While the kernel
    and the transport hold more than ``BACKLOG_BYTES`` for a reader that is behind, frames wait
    here instead (checked again every ``RETRY_SECONDS``); more than ``OUTBOX_BYTES`` waiting here
    closes the socket with 1013. So the close frame queues behind little, and reaches a reader
    that catches up, and a socket holds at most ``BACKLOG_BYTES + OUTBOX_BYTES`` plus a batch."""

    __slots__ = (
        "id",
        "ws",
        "user_id",
        "lease",
        "sent",
        "heard",
        "quiet",
        "_transport",
        "_pending",
        "_pending_bytes",
        "_flush_at",
        "_closer",
    )

    def __init__(self, ws: web.WebSocketResponse, user_id: str, lease: str = "") -> None:
        self.id = uuid.uuid4().hex
        self.ws = ws
        self.user_id = user_id
        self.lease = lease  # the registry lease it is registered under (shared/registry.py)
        self.sent = 0
        self.heard = True  # a frame came in since the last liveness sweep (gateway/liveness.py)
        self.quiet = 0  # sweeps since the last frame in
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_at: asyncio.Handle | asyncio.TimerHandle | None = None
        self._closer: asyncio.Task[bool] | None = None

    @property
    def closing(self) -> bool:
        return self._closer is not None

    def start(self, transport: asyncio.Transport | None) -> None:
        """Write to ``transport`` (the upgraded request's) from now on."""
        self._transport = transport

    def push(self, frame: str) -> None:
        """Queue a text frame for this turn's write."""
        self.push_wire(text_frame(frame))

    def push_wire(self, wire: bytes) -> None:
        """Queue an already built frame (:func:`text_frame`) for this turn's write."""
        if self._closer is not None:
            return
        self._pending.append(wire)
        self._pending_bytes += len(wire)
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_at = None
        transport = self._transport
        if self._closer is not None or transport is None or transport.is_closing() or self.ws.closed:
            self._pending, self._pending_bytes = [], 0
            return
        if transport.get_write_buffer_size() > BACKLOG_BYTES:  # the reader is behind: hold the frames
            if self._pending_bytes > OUTBOX_BYTES:
                SLOW_CLOSED.inc()
                log.warning("ws_slow_consumer", conn=self.id, waiting=self._pending_bytes)
                self._pending, self._pending_bytes = [], 0
                self.close_soon(TRY_AGAIN_LATER, "cannot keep up")
            else:
                self._flush_at = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._flush)
            return
        self._write(transport)

    def _write(self, transport: asyncio.Transport) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if pending:
            transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
            self.sent += len(pending)
            FRAMES_SENT.inc(len(pending))

    def abort(self) -> None:
        """Drop the connection without a close handshake (its peer stopped answering)."""
        if self._transport is not None:
            self._transport.abort()

    def close_soon(self, code: int, message: str) -> None:
        """Close with ``code``; frames already pushed (e.g. the error that explains a 1008) go
        first, except to a socket closed for not keeping up (1013), which cannot take them."""
        if self._closer is None:
            transport = self._transport
            if code != TRY_AGAIN_LATER and transport is not None and not transport.is_closing() and not self.ws.closed:
                self._write(transport)
            self._closer = asyncio.create_task(self.ws.close(code=code, message=message.encode()))

    async def stop(self) -> None:
        """Owner's teardown: let a close we started finish its handshake (bounded). (Cancelling
        the close would drop the socket without its close code: 1006.)"""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        closer = self._closer
        if closer is None:
            return
        if not closer.done():
            try:
                await asyncio.wait_for(asyncio.shield(closer), CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                pass
        if not closer.done():
            closer.cancel()
        try:
            await closer
        except (asyncio.CancelledError, ConnectionError, RuntimeError):
            pass


class Hub:
    """This gateway's connections, and each connected user's rate limits (dropped with the last one)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.by_id: dict[str, Connection] = {}
        # a tuple per user: most users have one connection, and a set of one costs four times as much
        self.by_user: dict[str, tuple[Connection, ...]] = {}
        self.user_limits: dict[str, UserLimits] = {}

    def add(self, conn: Connection) -> UserLimits:
        self.by_id[conn.id] = conn
        self.by_user[conn.user_id] = (*self.by_user.get(conn.user_id, ()), conn)
        CONNECTIONS.set(len(self.by_id))
        return self.user_limits.setdefault(conn.user_id, UserLimits(self.limits))

    def remove(self, conn: Connection) -> None:
        self.by_id.pop(conn.id, None)
        users = self.by_user.get(conn.user_id)
        if users is not None:
            left = tuple(c for c in users if c is not conn)
            if left:
                self.by_user[conn.user_id] = left
            else:
                del self.by_user[conn.user_id]
                self.user_limits.pop(conn.user_id, None)
        CONNECTIONS.set(len(self.by_id))

    def targets(self, users: list[str], conn: str | None) -> Iterator[Connection]:
        if conn is not None:
            found = self.by_id.get(conn)
            if found is not None:
                yield found
            return
        for user in users:
            yield from self.by_user.get(user, ())

    def close_soon_all(self, code: int, message: str) -> None:
        for conn in list(self.by_id.values()):
            conn.close_soon(code, message)

    async def close_all(self, code: int = WSCloseCode.GOING_AWAY, message: bytes = b"server shutdown") -> None:
        conns = list(self.by_id.values())
        await asyncio.gather(*(c.ws.close(code=code, message=message) for c in conns), return_exceptions=True)
