"""Test harness: real servers as processes, services started the way operators start them."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from devtools.stack import Stack, metric_sum, spawn_service, wait_ready
from query.store import direct_key
from shared.auth import mint
from shared.db import session_target

from .protocol import problems

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(user: str, **kw: Any) -> str:
    return mint(SECRET, user, **kw)


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# Closes after which a catch-up client reconnects: a service restart (1012), and a connection
# that broke without a close frame (1006: its gateway crashed), as the contract asks of clients.
RECONNECT_AFTER = (1006, 1012)
CAUGHT_UP = "caught-up"  # the type the harness gives a message a client read over REST after a reconnect


class WsClient:
    """A test WebSocket client that records every frame it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession, user: str) -> None:
        self.ws = ws
        self.session = session
        self.user = user
        self.frames: list[dict[str, Any]] = []
        self.arrived: list[float] = []  # loop time each frame arrived, parallel to frames
        self.violations: list[str] = []  # frames that do not match gateway/asyncapi.yaml
        self.changed = asyncio.Condition()
        self.closed_code: int | None = None
        # set by System.connect(..., catch_up=True): after a 1012 (service restart) or a 1006 (its
        # gateway crashed) the client does what the contract asks, reconnects (to any gateway that
        # answers) and catches up over REST; this returns the new socket
        self.resume: Callable[[WsClient], Awaitable[aiohttp.ClientWebSocketResponse]] | None = None
        self.restarts = 0
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    async with self.changed:
                        self.frames.append(json.loads(msg.data))
                        self.violations += [f"{msg.data[:200]}: {p}" for p in problems("ServerFrame", self.frames[-1])]
                        self.arrived.append(asyncio.get_running_loop().time())
                        self.changed.notify_all()
            if self.ws.close_code in RECONNECT_AFTER and self.resume is not None:
                self.restarts += 1
                self.ws = await self.resume(self)
                continue
            break
        async with self.changed:
            self.closed_code = self.ws.close_code
            self.changed.notify_all()

    def seen_seqs(self) -> dict[str, int]:
        """conversationId -> the highest seq this client has, over the socket or from catch-up."""
        out: dict[str, int] = {}
        for f in self.frames:
            if f.get("type") in ("new-message", CAUGHT_UP):
                out[f["conversationId"]] = max(out.get(f["conversationId"], 0), f["seq"])
        return out

    async def caught_up(self, messages: list[dict[str, Any]]) -> None:
        async with self.changed:
            self.frames += [{**m, "type": CAUGHT_UP} for m in messages]
            self.arrived += [asyncio.get_running_loop().time()] * len(messages)
            self.changed.notify_all()

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def send_message(self, conversation_id: uuid.UUID, content: str, temp_id: str | None = None) -> str:
        temp_id = temp_id or uuid.uuid4().hex
        await self.send(
            {
                "action": "send-message",
                "tempMessageId": temp_id,
                "conversationId": str(conversation_id),
                "content": content,
            }
        )
        return temp_id

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 15) -> Any:
        async def waiter() -> Any:
            async with self.changed:
                while True:
                    result = predicate(self.frames)
                    if result:
                        return result
                    if self.closed_code is not None:
                        raise AssertionError(f"socket closed with {self.closed_code}; frames: {self.frames[-5:]}")
                    await self.changed.wait()

        return await asyncio.wait_for(waiter(), timeout)

    async def wait_frame(self, **match: Any) -> dict[str, Any]:
        def find(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
            for f in frames:
                if all(f.get(k) == v for k, v in match.items()):
                    return f
            return None

        return await self.wait_for(find)

    async def wait_closed(self, timeout: float = 15) -> int:
        async def waiter() -> int:
            async with self.changed:
                while self.closed_code is None:
                    await self.changed.wait()
                return self.closed_code

        return await asyncio.wait_for(waiter(), timeout)

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        await self.session.close()


@dataclass
class System:
    """One isolated system: its own database, vhost and Redis db, and the services a test starts."""

    stack: Stack
    workdir: Path
    database: str
    vhost: str
    redis_db: int
    partitions: int = 4
    services: list[Service] = field(default_factory=list)
    clients: list[WsClient] = field(default_factory=list)
    # the engines' settings, when a test runs on others than the session's one-node servers (clusters)
    engines: dict[str, str] = field(default_factory=dict)
    # rabbitmqctl against the broker the services use
    ctl: Callable[..., subprocess.CompletedProcess[str]] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "CHAT_DATABASE_URL": self.stack.postgres.dsn(self.database),
            "CHAT_AMQP_URL": self.stack.rabbitmq.url(self.vhost),
            "CHAT_REDIS_URL": self.stack.redis.url(self.redis_db),
            **self.engines,
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_PARTITIONS": str(self.partitions),
            "CHAT_HOST": "127.0.0.1",
            "CHAT_LOG_LEVEL": "info",
        }

    def rabbitmqctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ctl(*args) if self.ctl is not None else self.stack.rabbitmq.ctl(*args)

    def spawn(self, name: str, env: dict[str, str] | None = None, port: int | None = None) -> Service:
        port = port or free_port()
        index = sum(1 for s in self.services if s.name == name)
        log = self.workdir / f"{name}-{index}.log"
        full_env = {
            **os.environ,
            **self.env,
            "CHAT_PORT": str(port),
            "CHAT_INSTANCE_ID": f"{name}-{index}-{port}",
            **(env or {}),
        }
        proc = spawn_service(name, full_env, log)
        service = Service(name, port, proc, log)
        self.services.append(service)
        return service

    async def start(self, name: str, env: dict[str, str] | None = None, port: int | None = None) -> Service:
        service = self.spawn(name, env, port)
        await wait_ready(service.url, proc=service.proc)
        return service

    async def start_all(self, gateways: int = 1, writers: int = 1, notifiers: int = 1, query: bool = False) -> None:
        names = ["writer"] * writers + ["notifier"] * notifiers + ["gateway"] * gateways + (["query"] if query else [])
        started = [self.spawn(n) for n in names]
        await asyncio.gather(*(wait_ready(s.url, proc=s.proc) for s in started))

    def of(self, name: str) -> list[Service]:
        return [s for s in self.services if s.name == name]

    async def connect(
        self, user: str, gateway: int = 0, token_value: str | None = None, *, catch_up: bool = False
    ) -> WsClient:
        """A socket for ``user``; with ``catch_up`` (needs the query service) a 1012 close or a broken
        socket (1006) makes the client reconnect and read what it missed over REST, as the contract
        asks of clients."""
        session = aiohttp.ClientSession()
        gateways = self.of("gateway")
        query = f"/?Authorization={token_value or token(user)}"
        try:
            ws = await session.ws_connect(gateways[gateway].url + query)
        except BaseException:
            await session.close()
            raise
        client = WsClient(ws, session, user)
        if catch_up:  # its own gateway first, then the others, as a load balancer would
            urls = [g.url + query for g in gateways[gateway:] + gateways[:gateway]]
            client.resume = functools.partial(self._resume, urls)
        self.clients.append(client)
        return client

    async def _resume(self, urls: list[str], client: WsClient) -> aiohttp.ClientWebSocketResponse:
        deadline = time.monotonic() + 120
        attempt = 0
        while True:
            try:
                ws = await client.session.ws_connect(urls[attempt % len(urls)])
                break
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline:
                    raise
                attempt += 1
                await asyncio.sleep(0.5)
        # catch up: every conversation of the user, from the highest seq the client already has
        query, auth = self.of("query")[0].url, {"Authorization": token(client.user)}
        seen = client.seen_seqs()
        async with client.session.get(f"{query}/conversations", headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            conversations = [c["conversationId"] for c in await resp.json()]
        for cid in conversations:
            after = seen.get(cid, 0)
            while True:
                params = {"limit": "100", "afterSeq": str(after)}
                async with client.session.get(
                    f"{query}/conversations/{cid}/messages", headers=auth, params=params
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    page = await resp.json()
                if not page:
                    break
                await client.caught_up(page)
                after = max(m["seq"] for m in page)
        return ws

    def active_consumers(self, queue_prefix: str) -> dict[str, str]:
        """The broker's view: queue -> instance id of its active consumer (tags are ``<kind>:<instance>:<p>``)."""
        out = self.rabbitmqctl(
            "list_consumers", "-p", self.vhost, "queue_name", "consumer_tag", "active", "--quiet", "--no-table-headers"
        ).stdout
        active: dict[str, str] = {}
        for line in out.strip().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].startswith(queue_prefix) and parts[2] == "true":
                active[parts[0]] = parts[1].split(":")[1]
        return active

    async def metric(self, service: Service, name: str) -> float:
        """The sum of every sample of ``name`` on ``service``'s /metrics."""
        async with aiohttp.ClientSession() as session, session.get(f"{service.url}/metrics") as response:
            text = await response.text()
        return metric_sum(text, name)

    async def db(self) -> asyncpg.Connection:
        """A connection to the primary (of several hosts, the one that takes writes)."""
        dsn = self.engines.get("CHAT_DATABASE_URL") or self.stack.postgres.dsn(self.database)
        return await asyncpg.connect(dsn, target_session_attrs=session_target(dsn))

    async def count_messages(self) -> int:
        conn = await self.db()
        try:
            return await conn.fetchval("SELECT count(*) FROM messages")
        finally:
            await conn.close()

    async def conversation(self, users: list[str], *, title: str | None = None, group: bool | None = None) -> uuid.UUID:
        """Create a conversation directly in the database (the REST path has its own tests)."""
        group = len(users) > 2 if group is None else group
        cid = uuid.uuid4()
        conn = await self.db()
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO conversations (id, title, is_group, created_by, direct_key) VALUES ($1, $2, $3, $4, $5)",
                    cid,
                    title,
                    group,
                    users[0],
                    None if group else direct_key(*users),
                )
                await conn.executemany(
                    "INSERT INTO participants (conversation_id, user_id) VALUES ($1, $2)", [(cid, u) for u in users]
                )
        finally:
            await conn.close()
        return cid

    async def close(self) -> None:
        for client in self.clients:
            try:
                await asyncio.wait_for(client.close(), 5)
            except Exception:
                pass
        # all at once, off the event loop: a test's proxies run on it, and a service stopping may need them
        await asyncio.gather(*(asyncio.to_thread(service.terminate, 15) for service in self.services))

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} :{s.port}\n{s.output()[-3000:]}" for s in self.services)
