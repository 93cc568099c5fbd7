"""A Postgres pool that tolerates a database that is down at start, restarts later, or fails over.

``CHAT_DATABASE_URL`` may name several hosts as libpq does: connections go to the one that takes
writes (``target_session_attrs=read-write`` unless the URL says otherwise), and asyncpg tries the
hosts again for every new connection. It never re-checks a pooled one, so a connection left on a
primary that was demoted (read-only: SQLSTATE 25006) would fail every write: such a failure
expires the whole pool, and the caller's retry gets connections to the new primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import asyncpg
from asyncpg.connect_utils import SessionAttribute
from asyncpg.pool import PoolConnectionProxy

from .log import get_logger
from .tasks import cancel_and_wait

log = get_logger(__name__)

# Errors after which retrying the same unit of work later may succeed. (A unique violation is not
# one in general: the writer retries it on purpose, writer/app.py RETRY, and anywhere else it is a bug.)
TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.QueryCanceledError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # a prepared statement whose table a migration changed: asyncpg re-prepares it on the next
    # try (inside a transaction it cannot do so itself, and the batch must not be dead-lettered)
    asyncpg.InvalidCachedStatementError,
)


# What the store functions take: a connection, or the pool's proxy for one (Database.acquire()).
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


class DatabaseUnavailable(Exception):
    pass


# Server settings of every connection. A process frozen inside a transaction (a stopped pod)
# would hold its row locks until it woke: Postgres ends such a transaction after 10 s, so the
# replica that took over its partitions can write (docs/operations.md, "A frozen process").
SERVER_SETTINGS = {"idle_in_transaction_session_timeout": "10000"}


async def _reset(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """On release to the pool: end a transaction left open, nothing more. asyncpg's default also
    runs ``RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()``, a round trip per release
    for session state that nothing here creates."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def session_target(dsn: str, default: SessionAttribute = SessionAttribute.read_write) -> SessionAttribute | None:
    """Which of a URL's hosts to connect to: ``default``, unless the URL says (asyncpg would let
    the keyword win over the URL)."""
    return None if "target_session_attrs=" in dsn else default


class Database:
    """Creates the pool in the background, retrying until the database answers."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 10.0,
        statement_cache: int = 100,
        standby: bool = False,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.server_settings = {**SERVER_SETTINGS, **(settings or {})}
        # the primary of the URL's hosts, or (to read from) a standby if there is one
        self.target = session_target(dsn, SessionAttribute.prefer_standby if standby else SessionAttribute.read_write)
        self.statement_cache = statement_cache
        self.min_size = min_size
        self.max_size = max_size
        self.command_timeout = command_timeout
        self.pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="db-connect")

    async def _connect(self) -> None:
        backoff = 0.25
        while True:
            try:
                self.pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    command_timeout=self.command_timeout,
                    timeout=5,
                    # prepared statements save a round trip and a parse per query; 0 (CHAT_DB_STATEMENT_CACHE)
                    # for a pgbouncer older than 1.21 in transaction mode (asyncpg #198)
                    statement_cache_size=self.statement_cache,
                    reset=_reset,
                    server_settings=self.server_settings,
                    target_session_attrs=self.target,
                )
                log.info("db_connected")
                return
            except TRANSIENT as exc:
                log.warning("db_connect_failed", error=exc.__class__.__name__, retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection for one unit of work. A write refused as read-only means the
        server was demoted (a fail-over): every pooled connection is dropped, and
        :class:`DatabaseUnavailable` tells the caller to retry, on connections to the new primary."""
        pool = self.pool
        if pool is None:
            raise DatabaseUnavailable("database not connected")
        # With a connection idle, no timeout: asyncpg bounds one with a task of its own and a timer
        # on release, a tenth of a simple read's CPU in the query service (py-spy).
        async with pool.acquire(timeout=None if pool.get_idle_size() else 5) as conn:
            try:
                yield conn
            except asyncpg.ReadOnlySQLTransactionError:
                log.warning("db_read_only", action="reconnecting to the primary")
                await pool.expire_connections()
                raise DatabaseUnavailable("the database refused a write as read-only (a fail-over)") from None

    async def ping(self) -> bool:
        if self.pool is None:
            return False
        async with self.pool.acquire(timeout=2) as conn:
            return bool(await conn.fetchval("SELECT 1", timeout=2) == 1)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 10)
            except asyncio.TimeoutError:
                self.pool.terminate()
            self.pool = None
