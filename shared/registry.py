"""Where each user's connections are: the Redis key layout, in one place.

- ``chat:conns:<user>``: a sorted set of ``<instance>|<conn>`` members scored by their lease's
  expiry (ms since the epoch). A gateway refreshes its connections' leases while it lives, so a
  dead gateway's entries lapse on their own; readers ignore expired members.
- ``chat:registry:since``: when the registry was (re)started. Redis may come back empty after a
  restart; until every gateway has had a full refresh interval to re-register, the notifier
  broadcasts instead of trusting lookups (see notifier/routing.py). Every renewal extends its
  expiry, so it lapses together with the last gateway's leases, never outlives them.
- ``chat:registry:master``: the replication id of the Redis master the registry was built on.
  Replication is asynchronous, so a fail-over to a replica may lose the last leases written; a
  script that finds another master serving the registry restarts ``since`` there, and the
  notifier broadcasts again until every gateway has re-registered.
- ``chat:fresh:<user>``: present for ``FRESH_SECONDS`` after a change any of the user's reads
  would show was announced (a message, a read pointer, a conversation): while it is there the
  query service reads that user's data from the primary, not a standby (query/reads.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from .settings import RedisSettings

# What a Redis call can fail with: its own errors, the socket's, and our own timeouts around it.
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
TIMEOUTS: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2, "health_check_interval": 10}


class _SentinelRedis(Redis):
    """A master client that also closes the Sentinel connections it found the master through."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def redis_client(settings: RedisSettings) -> Redis:
    """A client with timeouts (a dead Redis fails fast rather than hanging a request): to the URL,
    or to the master the Sentinels elect, followed through fail-overs (redis-py asks the Sentinels
    again whenever a connection to the master fails or finds it demoted)."""
    if not settings.sentinels:
        assert settings.url is not None, "settings.load() requires a URL or Sentinels"
        return Redis.from_url(settings.url, **TIMEOUTS)
    auth: dict[str, Any] = {}
    if settings.url is not None:  # with Sentinels the URL gives only the password and the database
        parts = urlsplit(settings.url)
        auth = {"password": parts.password, "db": int(parts.path.strip("/") or 0)}
    sentinel = Sentinel(list(settings.sentinels), sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1})
    assert settings.master is not None, "settings.load() requires the master's name with Sentinels"
    client: _SentinelRedis = sentinel.master_for(settings.master, redis_class=_SentinelRedis, **TIMEOUTS, **auth)
    client.sentinels = sentinel
    return client


LEASE_SECONDS = 30
REFRESH_SECONDS = 10
SINCE_KEY = "chat:registry:since"
MASTER_KEY = "chat:registry:master"
FRESH_SECONDS = 10


def conns_key(user_id: str) -> str:
    return f"chat:conns:{user_id}"


def fresh_key(user_id: str) -> str:
    return f"chat:fresh:{user_id}"


def member(instance_id: str, conn_id: str) -> str:
    return f"{instance_id}|{conn_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


# Lua, shared by the scripts below: KEYS[1] is SINCE_KEY, KEYS[2] MASTER_KEY, ARGV[1] now (ms).
# ``replid`` is this master's replication id; a registry built on another master (a fail-over)
# starts again from now, one a gateway started before any script saw it is adopted.
_CHECK_MASTER = """
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
local since = redis.call('GET', KEYS[1])
if since then
  local owner = redis.call('GET', KEYS[2])
  if owner ~= replid then
    if owner then
      since = ARGV[1]
      redis.call('SET', KEYS[1], since, 'KEEPTTL')
    end
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then redis.call('SET', KEYS[2], replid, 'PX', ttl) else redis.call('SET', KEYS[2], replid) end
  end
end
"""

# KEYS: SINCE_KEY, MASTER_KEY, then ARGV[2] users' connection sets, then the users to mark fresh;
# ARGV: now, how many sets, the mark's life (ms). Returns the registry's start time (or false)
# followed by each user's live members.
LOOKUP = (
    _CHECK_MASTER
    + """
local out = {since or false}
local sets = tonumber(ARGV[2])
for i = 3, sets + 2 do
  out[#out + 1] = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[1], '+inf')
end
for i = sets + 3, #KEYS do
  redis.call('SET', KEYS[i], 1, 'PX', ARGV[3])
end
return out
"""
)

# KEYS: SINCE_KEY, MASTER_KEY, the user's mark; ARGV: now. Returns the registry's start time (or
# false) and whether the user's mark is there.
FRESH = (
    _CHECK_MASTER
    + """
return {since or false, redis.call('EXISTS', KEYS[3])}
"""
)

# KEYS: SINCE_KEY, MASTER_KEY; ARGV: now, ttl (s). Starts the registry if it is not running, on this
# master, and extends its life (it lapses with the last gateway's leases).
START = """
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], replid)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
"""

# KEYS: the user's connection set, SINCE_KEY, MASTER_KEY; ARGV: now, expiry, member, limit, ttl.
# Drops lapsed leases, then admits the connection only if the user holds fewer than ``limit``
# live ones across every gateway: the count and the add are one atomic step.
ADMIT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
if redis.call('SET', KEYS[2], now, 'NX') then
  redis.call('SET', KEYS[3], replid)
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 1
"""


class Registry:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._lookup = redis.register_script(LOOKUP)
        self._admit = redis.register_script(ADMIT)
        self._start = redis.register_script(START)
        self._fresh = redis.register_script(FRESH)

    async def admit(self, instance_id: str, user_id: str, conn_id: str, limit: int) -> bool:
        """Lease a new connection unless ``user_id`` already holds ``limit`` live ones (all gateways)."""
        now = now_ms()
        admitted = await self._admit(
            keys=[conns_key(user_id), SINCE_KEY, MASTER_KEY],
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
            await self._start(keys=[SINCE_KEY, MASTER_KEY], args=[now_ms(), LEASE_SECONDS * 2], client=pipe)
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

    async def instances(self, user_ids: list[str], fresh: Sequence[str] = ()) -> tuple[dict[str, set[str]], int | None]:
        """Live gateway instances per user, and the registry's start: one command, one round trip.
        ``fresh`` users are marked fresh in the same call (``FRESH_SECONDS``).

        A pipeline of one ZRANGEBYSCORE per user costs redis-py a command's packing and parsing
        each; one script call for the whole batch costs that once.
        """
        since, *results = await self._lookup(
            keys=[SINCE_KEY, MASTER_KEY, *map(conns_key, user_ids), *map(fresh_key, fresh)],
            args=[now_ms(), len(user_ids), FRESH_SECONDS * 1000],
        )
        found: dict[str, set[str]] = {}
        for user_id, members in zip(user_ids, results):
            if members:
                found[user_id] = {m.split(b"|", 1)[0].decode() for m in members}
        return found, int(since) if since else None

    async def mark_fresh(self, user_ids: list[str]) -> None:
        """Mark ``user_ids`` fresh: for ``FRESH_SECONDS`` their reads go to the primary."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.set(fresh_key(user_id), 1, px=FRESH_SECONDS * 1000)
            await pipe.execute()

    async def freshness(self, user_id: str) -> tuple[int | None, bool]:
        """The registry's start (as :meth:`instances` checks it) and whether ``user_id`` is fresh."""
        since, marked = await self._fresh(keys=[SINCE_KEY, MASTER_KEY, fresh_key(user_id)], args=[now_ms()])
        return (int(since) if since else None), bool(marked)


def registry_trusted(since_ms: int | None, now: int) -> bool:
    """Lookups are complete once every gateway had a full refresh interval since the (re)start."""
    return since_ms is not None and now - since_ms >= (REFRESH_SECONDS + 2) * 1000
