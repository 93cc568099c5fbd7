"""This gateway's open connections, indexed by user and by connection id."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator

import prometheus_client
from aiohttp import WSCloseCode, web

from shared.log import get_logger
from shared.settings import Limits

from .limits import UserLimits

log = get_logger(__name__)
OUTBOX_LIMIT = 1024  # frames queued toward one socket before it counts as unable to keep up
TRY_AGAIN_LATER = 1013
CLOSE_TIMEOUT = 5.0

CONNECTIONS = prometheus_client.Gauge("chat_gateway_connections", "Open WebSocket connections")
FRAMES_SENT = prometheus_client.Counter("chat_gateway_frames_sent_total", "Frames written to sockets")
SLOW_CLOSED = prometheus_client.Counter(
    "chat_gateway_slow_consumers_closed_total", "Connections closed with 1013 because they could not keep up"
)


class Connection:
    """One socket: a bounded outbox drained by its own writer task."""

    def __init__(self, ws: web.WebSocketResponse, user_id: str) -> None:
        self.id = uuid.uuid4().hex
        self.ws = ws
        self.user_id = user_id
        self.outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_LIMIT)
        self.sent = 0
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[bool] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._drain(), name=f"ws-writer:{self.id}")

    def push(self, frame: str) -> None:
        """Queue a frame; a client this far behind is closed with 1013 instead of buffered."""
        if self._closer is not None:
            return
        try:
            self.outbox.put_nowait(frame)
        except asyncio.QueueFull:
            SLOW_CLOSED.inc()
            log.warning("ws_slow_consumer", conn=self.id, queued=self.outbox.qsize())
            self.close_soon(TRY_AGAIN_LATER, "cannot keep up")

    def close_soon(self, code: int, message: str) -> None:
        if self._closer is None:
            self._closer = asyncio.create_task(self.ws.close(code=code, message=message.encode()))

    async def _drain(self) -> None:
        while True:
            frame = await self.outbox.get()
            try:
                await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return
            self.sent += 1
            FRAMES_SENT.inc()

    async def stop(self) -> None:
        """Owner's teardown: let a close we started finish its handshake (bounded), then cancel the
        writer. (Cancelling the close would drop the socket without its close code: 1006.)"""
        if self._closer is not None and not self._closer.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._closer), CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                pass
        for task in (self._writer, self._closer):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._writer, self._closer):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, ConnectionError, RuntimeError):
                    pass


class Hub:
    """This gateway's connections, and each connected user's rate limits (dropped with the last one)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.by_id: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = defaultdict(set)
        self.user_limits: dict[str, UserLimits] = {}

    def add(self, conn: Connection) -> UserLimits:
        self.by_id[conn.id] = conn
        self.by_user[conn.user_id].add(conn)
        CONNECTIONS.set(len(self.by_id))
        return self.user_limits.setdefault(conn.user_id, UserLimits(self.limits))

    def remove(self, conn: Connection) -> None:
        self.by_id.pop(conn.id, None)
        users = self.by_user.get(conn.user_id)
        if users is not None:
            users.discard(conn)
            if not users:
                del self.by_user[conn.user_id]
                self.user_limits.pop(conn.user_id, None)
        CONNECTIONS.set(len(self.by_id))

    def pairs(self) -> list[tuple[str, str]]:
        return [(c.user_id, c.id) for c in self.by_id.values()]

    def targets(self, users: list[str], conn: str | None) -> Iterator[Connection]:
        if conn is not None:
            found = self.by_id.get(conn)
            if found is not None:
                yield found
            return
        for user in users:
            yield from tuple(self.by_user.get(user, ()))

    def close_soon_all(self, code: int, message: str) -> None:
        for conn in list(self.by_id.values()):
            conn.close_soon(code, message)

    async def close_all(self, code: int = WSCloseCode.GOING_AWAY, message: bytes = b"server shutdown") -> None:
        conns = list(self.by_id.values())
        await asyncio.gather(*(c.ws.close(code=code, message=message) for c in conns), return_exceptions=True)
