"""Live replicas of one kind (writer or notifier) as leases in Redis, and the partitions each owns.

``chat:members:<kind>`` is a sorted set of instance ids scored by their lease's expiry, in Redis
server time (so replicas' clocks do not matter). Every ``BEAT_SECONDS`` a replica renews its own
lease, drops expired ones and reads the rest in one script call, then hands
:func:`shared.partitions.owned` to its consumers. A graceful leave removes the lease at once; a
crashed replica's lease lapses after ``LEASE_SECONDS``.

When Redis cannot be reached the replica keeps what it has until its own lease is about to lapse
(the others will then stop counting it). Then a writer, which needs Redis for nothing else,
subscribes to every partition: the queues' single-active-consumer setting keeps one consumer
active per queue, so work goes on (whoever was active stays active) instead of stopping because
Redis is away. A notifier, which cannot route an event without Redis, lets its partitions go
instead, so that replicas that still reach Redis take them over. docs/operations.md walks
through join, leave, crash and a split between a replica and Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import prometheus_client
from redis.asyncio import Redis

from .log import get_logger
from .partitions import owned
from .registry import REDIS_ERRORS

log = get_logger(__name__)
LEASE_SECONDS = 10.0
BEAT_SECONDS = 2.0
# Stop trusting our own lease this long before it lapses: by then the others may take our partitions.
MARGIN_SECONDS = 3.0
PAUSED_POLL_SECONDS = 0.1

# KEYS[1]: the member set; ARGV[1]: this instance; ARGV[2]: lease in ms. Returns the live members.
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 3)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""

OWNED = prometheus_client.Gauge(
    "chat_partition_owned", "1 for each partition this replica consumes, 0 for the others", ["kind", "partition"]
)
MEMBERS = prometheus_client.Gauge("chat_partition_members", "Live replicas of this kind seen in Redis")
CHANGES = prometheus_client.Counter(
    "chat_partition_assignment_changes_total", "Times this replica's set of partitions changed"
)
FALLBACK = prometheus_client.Gauge(
    "chat_partition_fallback", "1 while Redis is unreachable and every partition is subscribed"
)

OnChange = Callable[[frozenset[int]], None]


def members_key(kind: str) -> str:
    return f"chat:members:{kind}"


class Membership:
    """Keeps this replica's lease and tells ``on_change`` which partitions to consume."""

    def __init__(
        self,
        redis: Redis,
        kind: str,
        instance_id: str,
        partitions: int,
        on_change: OnChange,
        *,
        works_without_redis: bool = True,
        consuming: Callable[[], bool] = lambda: True,
    ) -> None:
        self.redis = redis
        self.works_without_redis = works_without_redis
        # whether this replica can consume now (connected to the broker): a replica that cannot
        # stops renewing its lease, so that the others take its partitions once it lapses
        self.consuming = consuming
        self._paused = False
        self.kind = kind
        self.key = members_key(kind)
        self.instance_id = instance_id
        self.partitions = partitions
        self.on_change = on_change
        self.current: frozenset[int] | None = None
        self.fallback = False
        self._beat = redis.register_script(BEAT)
        self._renewed_at: float | None = None  # monotonic time of the last renewal Redis confirmed

    async def heartbeat(self) -> list[str]:
        """Renew our lease and return every live member (ourselves included)."""
        members = await asyncio.wait_for(
            self._beat(keys=[self.key], args=[self.instance_id, int(LEASE_SECONDS * 1000)]), BEAT_SECONDS * 2
        )
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def tick(self) -> None:
        """One beat: renew, recompute, and apply the change if there is one. Not while this
        replica cannot consume: its lease then lapses and the others take its partitions (a
        reconnect shorter than the lease changes nothing)."""
        if not self.consuming():
            if not self._paused and self._renewed_at is not None:  # (at start it simply has not begun)
                log.warning("membership_paused", reason="not connected to the broker")
            self._paused = True
            return
        if self._paused and self._renewed_at is not None:
            log.info("membership_resumed")
        self._paused = False
        try:
            members = await self.heartbeat()
        except REDIS_ERRORS as exc:
            lapsing = self._renewed_at is None or time.monotonic() - self._renewed_at > LEASE_SECONDS - MARGIN_SECONDS
            if lapsing and not self.fallback:
                log.warning("membership_fallback", error=exc.__class__.__name__)
                self.fallback = True
                FALLBACK.set(1)
            if not lapsing:
                return  # keep what we have: our lease still stands in the others' eyes
            target = frozenset(range(self.partitions)) if self.works_without_redis else frozenset()
        else:
            self._renewed_at = time.monotonic()
            if self.fallback:
                log.info("membership_restored", members=len(members))
                self.fallback = False
                FALLBACK.set(0)
            MEMBERS.set(len(members))
            target = owned(members, self.instance_id, self.partitions)
        self._apply(target)

    def _apply(self, target: frozenset[int]) -> None:
        if target == self.current:
            return
        previous = self.current or frozenset()
        log.info(
            "partitions_assigned",
            partitions=sorted(target),
            added=sorted(target - previous),
            removed=sorted(previous - target),
            fallback=self.fallback,
        )
        self.on_change(target)  # the consumers reconcile in their own task: the beat never waits
        self.current = target
        CHANGES.inc()
        for p in range(self.partitions):
            OWNED.labels(self.kind, str(p)).set(1 if p in target else 0)

    async def run(self) -> None:
        """The owner's loop (cancelled at shutdown, then :meth:`leave`)."""
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the beat: log it and try again next beat
                log.exception("membership_tick_failed")
            # while it cannot consume, look often: the first beat after the broker (re)connects
            # should not wait for the next round (at start, it is when the first messages get a consumer)
            interval = PAUSED_POLL_SECONDS if self._paused else BEAT_SECONDS
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def leave(self) -> None:
        """Graceful leave: drop our lease so the others take our partitions at their next beat."""
        try:
            await asyncio.wait_for(self.redis.zrem(self.key, self.instance_id), 2)
        except REDIS_ERRORS as exc:
            log.warning("membership_leave_failed", error=exc.__class__.__name__)
