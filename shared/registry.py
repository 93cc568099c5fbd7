"""Where each user's connections are: the Redis key layout, in one place.

- ``chat:conns:<user>``: a sorted set of ``<instance>|<conn>`` members scored by their lease's
  expiry (ms since the epoch). A gateway refreshes its connections' leases while it lives, so a
  dead gateway's entries lapse on their own; readers ignore expired members.
- ``chat:registry:since``: when the registry was (re)started. Redis may come back empty after a
  restart; until every gateway has had a full refresh interval to re-register, the notifier
  broadcasts instead of trusting lookups (see notifier/routing.py). Every renewal extends its
  expiry, so it lapses together with the last gateway's leases, never outlives them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

# What a Redis call can fail with: its own errors, the socket's, and our own timeouts around it.
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def redis_client(url: str) -> Redis:
    """A client with timeouts: a dead Redis fails fast rather than hanging a request."""
    return Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10)


LEASE_SECONDS = 30
REFRESH_SECONDS = 10
SINCE_KEY = "chat:registry:since"


def conns_key(user_id: str) -> str:
    return f"chat:conns:{user_id}"


def member(instance_id: str, conn_id: str) -> str:
    return f"{instance_id}|{conn_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


# KEYS[1] is SINCE_KEY, the rest are users' connection sets; ARGV[1] is now (ms). Returns the
# registry's start time (or false) followed by each user's live members.
LOOKUP = """
local out = {redis.call('GET', KEYS[1])}
for i = 2, #KEYS do
  out[i] = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[1], '+inf')
end
return out
"""


# KEYS[1] is the user's connection set, KEYS[2] SINCE_KEY; ARGV: now, expiry, member, limit, ttl.
# Drops lapsed leases, then admits the connection only if the user holds fewer than ``limit``
# live ones across every gateway: the count and the add are one atomic step.
ADMIT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('SET', KEYS[2], now, 'NX')
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""


class Registry:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._lookup = redis.register_script(LOOKUP)
        self._admit = redis.register_script(ADMIT)

    async def admit(self, instance_id: str, user_id: str, conn_id: str, limit: int) -> bool:
        """Lease a new connection unless ``user_id`` already holds ``limit`` live ones (all gateways)."""
        now = now_ms()
        admitted = await self._admit(
            keys=[conns_key(user_id), SINCE_KEY],
            args=[now, now + LEASE_SECONDS * 1000, member(instance_id, conn_id), limit, LEASE_SECONDS * 2],
        )
        return bool(admitted)

    async def check(self) -> bool:
        """Readiness check: Redis answers."""
        return bool(await self.redis.ping())

    async def register(self, instance_id: str, conns: Iterable[tuple[str, str]]) -> None:
        """Take or renew leases for ``(user_id, conn_id)`` pairs held by ``instance_id``."""
        expiry = now_ms() + LEASE_SECONDS * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(SINCE_KEY, now_ms(), nx=True)
            pipe.expire(SINCE_KEY, LEASE_SECONDS * 2)  # it lapses with the last gateway's leases
            for user_id, conn_id in conns:
                key = conns_key(user_id)
                pipe.zadd(key, {member(instance_id, conn_id): expiry})
                pipe.zremrangebyscore(key, "-inf", now_ms())
                pipe.expire(key, LEASE_SECONDS * 2)
            await pipe.execute()

    async def unregister(self, instance_id: str, conns: Iterable[tuple[str, str]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, conn_id in conns:
                pipe.zrem(conns_key(user_id), member(instance_id, conn_id))
            await pipe.execute()

    async def instances(self, user_ids: list[str]) -> tuple[dict[str, set[str]], int | None]:
        """Live gateway instances per user, and the registry's start: one command, one round trip.

        A pipeline of one ZRANGEBYSCORE per user costs redis-py a command's packing and parsing
        each; one script call for the whole batch costs that once.
        """
        since, *results = await self._lookup(keys=[SINCE_KEY, *map(conns_key, user_ids)], args=[now_ms()])
        found: dict[str, set[str]] = {}
        for user_id, members in zip(user_ids, results):
            if members:
                found[user_id] = {m.split(b"|", 1)[0].decode() for m in members}
        return found, int(since) if since else None


def registry_trusted(since_ms: int | None, now: int) -> bool:
    """Lookups are complete once every gateway had a full refresh interval since the (re)start."""
    return since_ms is not None and now - since_ms >= (REFRESH_SECONDS + 2) * 1000
