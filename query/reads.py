"""Where a request reads: the primary, or a standby that cannot hide what the caller must see.

With ``CHAT_DATABASE_READ_URL`` the query service reads from standbys, and reads stay
read-your-writes (docs/protocol.md section 4): a standby serves a user only when

- nothing the user's reads would show was announced in the last ``FRESH_SECONDS`` (the notifier
  marks every user whose reads an event changes, before any frame of it leaves; this service
  marks the participants of a conversation it creates before it answers), and
- the standby has replayed everything the primary had written ``FRESH_SECONDS - MARGIN`` seconds
  ago (sampled every second), so any change older than the mark's life is on it, and
- the registry in Redis has been running on the same master for at least ``FRESH_SECONDS``
  (a fail-over or restart of Redis may have lost marks; until then everything is read from the
  primary), and Redis answered.

Otherwise the primary serves the request. Each rule is cheap: one Redis script call per request,
two tiny queries a second for the lag.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import prometheus_client

from shared.db import TRANSIENT, Conn, Database, DatabaseUnavailable
from shared.log import get_logger
from shared.registry import FRESH_SECONDS, REDIS_ERRORS, Registry, now_ms
from shared.tasks import cancel_and_wait

log = get_logger(__name__)
SAMPLE_SECONDS = 1.0
MARGIN_SECONDS = 2.0  # for the sampling interval and clocks: a standby must be this much fresher
MAX_BEHIND = FRESH_SECONDS - MARGIN_SECONDS
T = TypeVar("T")

READS = prometheus_client.Counter(
    "chat_query_reads_total", "REST reads by where they were served, and why not from a standby", ["target", "reason"]
)
STANDBY_BEHIND = prometheus_client.Gauge(
    "chat_query_standby_behind_seconds",
    "How far behind the primary the read standby was at its last sample (0 when it has caught up)",
)
_TO = {reason: READS.labels("primary", reason) for reason in ("no_standby", "fresh", "standby_behind", "registry")} | {
    "standby": READS.labels("standby", "")
}


class Reads:
    """Picks the pool for each request's reads, and samples how far the standby is behind.

    Searches use pools of their own (``search``: the primary's and the standby's, same rules):
    their connections plan every statement for its values (``plan_cache_mode``), and a few of them
    bound how many searches run at once."""

    def __init__(
        self,
        primary: Database,
        standby: Database | None,
        registry: Registry | None,
        search: tuple[Database, Database | None] | None = None,
    ) -> None:
        self.primary = primary
        self.standby = standby
        self.registry = registry
        self.search = search or (primary, standby)
        self.samples: deque[tuple[float, int]] = deque(maxlen=int(FRESH_SECONDS / SAMPLE_SECONDS) + 4)
        self.caught_up_at: float | None = None  # the latest sample time whose primary position it has replayed
        self.primary_until = 0.0  # monotonic time until which every read goes to the primary
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.standby is not None:
            self._task = asyncio.create_task(self._sample_forever(), name="standby-lag")

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def run(self, user: str, work: Callable[[Conn], Awaitable[T]], *, search: bool = False) -> T:
        """``work`` on a connection to read ``user``'s data from (a search's with ``search``). A
        standby that fails is not used again until a sample finds it caught up, and the primary
        does the work instead."""
        primary, standby = self.search if search else (self.primary, self.standby)
        if await self._choose(user) is self.primary or standby is None:
            async with primary.acquire() as conn:
                return await work(conn)
        try:
            async with standby.acquire() as conn:
                return await work(conn)
        except (DatabaseUnavailable, *TRANSIENT) as exc:
            log.warning("standby_read_failed", error=exc.__class__.__name__)
            self.caught_up_at = None
            async with primary.acquire() as conn:
                return await work(conn)

    async def _choose(self, user: str) -> Database:
        if self.standby is None or self.standby.pool is None or self.registry is None:
            _TO["no_standby"].inc()
            return self.primary
        if not self.standby_usable(time.monotonic()):
            _TO["standby_behind"].inc()
            return self.primary
        try:
            since, fresh = await asyncio.wait_for(self.registry.freshness(user), 1.0)
        except REDIS_ERRORS:
            _TO["registry"].inc()
            return self.primary
        if since is None or now_ms() - since < FRESH_SECONDS * 1000:  # marks may be missing
            _TO["registry"].inc()
            return self.primary
        if fresh:
            _TO["fresh"].inc()
            return self.primary
        _TO["standby"].inc()
        return self.standby

    async def changed(self, users: list[str]) -> None:
        """``users``' reads now show something they must see at once (a conversation this service
        created): mark them fresh before answering. If Redis cannot take the marks, this process
        reads everything from the primary for as long as they would have lived."""
        if self.registry is None:
            return
        try:
            await asyncio.wait_for(self.registry.mark_fresh(users), 1.0)
        except REDIS_ERRORS as exc:
            log.warning("fresh_marks_failed", users=len(users), error=exc.__class__.__name__)
            self.primary_until = time.monotonic() + FRESH_SECONDS

    def standby_usable(self, now: float) -> bool:
        return self.caught_up_at is not None and now - self.caught_up_at <= MAX_BEHIND and now >= self.primary_until

    async def sample(self) -> None:
        """One sample: the primary's write position now, then how much of it the standby replayed."""
        assert self.standby is not None
        async with self.primary.acquire() as conn:
            position = await conn.fetchval(PRIMARY_POSITION, timeout=2)
        self.samples.append((time.monotonic(), position))
        async with self.standby.acquire() as conn:
            replayed = await conn.fetchval(REPLAYED, timeout=2)
        # a standby that was promoted (or a URL naming a primary) is never behind: it is the primary
        caught = [at for at, written in self.samples if replayed is None or written <= replayed]
        if caught:
            self.caught_up_at = max(caught)
        if self.caught_up_at is not None:
            STANDBY_BEHIND.set(max(0.0, time.monotonic() - SAMPLE_SECONDS - self.caught_up_at))

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample()
            except (DatabaseUnavailable, *TRANSIENT, asyncpg.PostgresError) as exc:
                log.warning("standby_sample_failed", error=exc.__class__.__name__)
            await asyncio.sleep(SAMPLE_SECONDS)


# positions as bytes since 0/0, so they compare as numbers
PRIMARY_POSITION = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
REPLAYED = """
SELECT CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint END
"""
