"""Where each user's connections are: the Redis key layout, in one place.

A gateway holds one lease (``<instance>|<generation>``) and renews it, not its sockets: an idle
socket costs Redis nothing after it is admitted (two commands in its life, one to admit, one
to leave).

- ``chat:gateways``: a sorted set of leases scored by their expiry (ms, Redis server time).
  A gateway renews its lease every ``REFRESH_SECONDS`` for ``LEASE_SECONDS``; a dead gateway's
  lease lapses, and with it every socket it registered. A lease that lapsed never lives again:
  the gateway closes its sockets with 1012 and takes a new one (gateway/leases.py).
- ``chat:sockets:<user>``: the user's sockets, members ``<lease>|<conn>`` all scored 0, so one
  lease's members are one lexicographic range. Readers count only members whose lease is live.
- ``chat:lease:<lease>:users``: the users a lease has sockets of, so that once the lease is dead
  a sweep (any gateway's, after a grace period) removes its members user by user.
- ``chat:conns:<user>``: the layout of earlier versions (members ``<instance>|<conn>`` scored by
  their own expiry); read while gateways of those versions may still run, never written.
- ``chat:registry:since``: when the registry was (re)started. Redis may come back empty after a
  restart; until every gateway has had time to register again (``TRUST_SECONDS``), the notifier
  broadcasts instead of trusting lookups (see notifier/routing.py). Every renewal extends its
  expiry, so it lapses together with the last gateway's lease, never outlives it.
- ``chat:registry:master``: the run id of the Redis server the registry was built on. A restart
  (even from a snapshot) or a fail-over to a replica (replication is asynchronous: the last
  writes may be lost) changes it: the first script that sees another server restarts ``since``
  there, and every gateway, finding its lease held on another server, takes a new lease and
  registers all its sockets under it, while the notifier broadcasts.
- ``chat:fresh:<user>``: present for ``FRESH_SECONDS`` after a change any of the user's reads
  would show was announced (a message, a read pointer, a conversation): while it is there the
  query service reads that user's data from the primary, not a standby (query/reads.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
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
# How long after the registry's (re)start lookups are incomplete: every gateway renews within a
# refresh interval, finds the registry's server changed and registers its sockets again.
TRUST_SECONDS = REFRESH_SECONDS + 5
SINCE_KEY = "chat:registry:since"
MASTER_KEY = "chat:registry:master"
LEASES_KEY = "chat:gateways"
FRESH_SECONDS = 10
SWEEP_USERS = 500  # users a sweep step frees of a dead lease's sockets (one short script)


def sockets_key(user_id: str) -> str:
    return f"chat:sockets:{user_id}"


def legacy_key(user_id: str) -> str:
    """Where gateways before migration to per-gateway leases kept the user's sockets (read only)."""
    return f"chat:conns:{user_id}"


def lease_users_key(lease: str) -> str:
    return f"chat:lease:{lease}:users"


def fresh_key(user_id: str) -> str:
    return f"chat:fresh:{user_id}"


def new_lease(instance_id: str) -> str:
    """A lease name: the instance and a generation no other process or lease ever uses."""
    return f"{instance_id}|{uuid.uuid4().hex[:12]}"


def member(lease: str, conn_id: str) -> str:
    return f"{lease}|{conn_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


# Lua, shared by the scripts below: KEYS[1] is SINCE_KEY, KEYS[2] MASTER_KEY, ARGV[1] now (ms).
# ``run`` identifies this Redis process (a restart, even from a snapshot, or a fail-over to a
# replica, changes it); a registry built on another server starts again from now, one a gateway
# started before any script saw it is adopted. ``clock`` is the server's time in ms: lease
# expiries are in it, so the gateways' clocks do not matter.
_CHECK_MASTER = """
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = redis.call('GET', KEYS[1])
if since then
  local owner = redis.call('GET', KEYS[2])
  if owner ~= run then
    if owner then
      since = ARGV[1]
      redis.call('SET', KEYS[1], since, 'KEEPTTL')
    end
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then redis.call('SET', KEYS[2], run, 'PX', ttl) else redis.call('SET', KEYS[2], run) end
  end
end
"""

# Starts the registry if it is not running, on this server, and extends its life (it lapses with
# the last gateway's lease). ARGV[2] is the life in seconds.
_START = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], run)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
"""

# Whether lease ``l`` is live, remembered in ``alive`` for the rest of the script.
_ALIVE = """
local alive = {}
local function live(l)
  local ok = alive[l]
  if ok == nil then
    local s = redis.call('ZSCORE', KEYS[3], l)
    ok = s ~= false and tonumber(s) >= clock
    alive[l] = ok
  end
  return ok
end
"""

# KEYS: SINCE_KEY, MASTER_KEY, LEASES_KEY, then ARGV[2] users' socket sets, as many legacy sets,
# then the users to mark fresh; ARGV: now, how many users, the mark's life (ms). Returns the
# registry's start (or false) followed by each user's gateway instances with a live lease.
LOOKUP = (
    _CHECK_MASTER
    + _ALIVE
    + """
local out = {since or false}
local n = tonumber(ARGV[2])
for i = 4, n + 3 do
  local found, list = {}, {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    local lease = string.match(m, '^([^|]*|[^|]*)|')
    if lease and live(lease) then
      local inst = string.match(lease, '^[^|]*')
      if not found[inst] then found[inst] = true; list[#list + 1] = inst end
    end
  end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i + n], ARGV[1], '+inf')) do
    local inst = string.match(m, '^[^|]*')
    if not found[inst] then found[inst] = true; list[#list + 1] = inst end
  end
  out[#out + 1] = list
end
for i = 2 * n + 4, #KEYS do
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

# KEYS: SINCE_KEY, MASTER_KEY, LEASES_KEY; ARGV: now, life of the registry (s), lease, the server's
# run id the gateway last saw, lease (ms). Extends a live lease on the same server: 'ok'. A lease
# the gateway holds on another server (restarted, failed over, or the gateway's first call):
# 'moved', nothing extended. A lease that lapsed here: 'lapsed' (it stays dead). Returns
# {status, run id}.
RENEW = (
    _CHECK_MASTER
    + """
if run ~= ARGV[4] then return {'moved', run} end
local s = redis.call('ZSCORE', KEYS[3], ARGV[3])
if s == false or tonumber(s) < clock then return {'lapsed', run} end
redis.call('ZADD', KEYS[3], clock + tonumber(ARGV[5]), ARGV[3])
"""
    + _START
    + """
return {'ok', run}
"""
)

# KEYS: SINCE_KEY, MASTER_KEY, LEASES_KEY; ARGV: now, life of the registry (s), a new lease, its
# life (ms). Takes the lease; returns the server's run id.
TAKE = (
    _CHECK_MASTER
    + """
redis.call('ZADD', KEYS[3], clock + tonumber(ARGV[4]), ARGV[3])
"""
    + _START
    + """
return run
"""
)

# KEYS: SINCE_KEY, MASTER_KEY, LEASES_KEY, the user's sockets, the user's legacy set, the lease's
# users; ARGV: now, life of the registry (s), lease, member, limit, user. Admits the socket only
# under a live lease (-1 otherwise) and if the user holds fewer than ``limit`` live sockets across
# every gateway (0 otherwise): the count and the add are one atomic step. Sockets under dead
# leases are dropped on the way (a lease that lapsed never lives again).
ADMIT = (
    _CHECK_MASTER
    + _ALIVE
    + """
if not live(ARGV[3]) then return -1 end
local count = redis.call('ZCOUNT', KEYS[5], ARGV[1], '+inf')
for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  local lease = string.match(m, '^([^|]*|[^|]*)|')
  if lease and live(lease) then count = count + 1 else redis.call('ZREM', KEYS[4], m) end
end
if count >= tonumber(ARGV[5]) then return 0 end
redis.call('ZADD', KEYS[4], 0, ARGV[4])
redis.call('SADD', KEYS[6], ARGV[6])
"""
    + _START
    + """
return 1
"""
)

# KEYS: the lease's users, then sockets sets; ARGV: the users, then the members (same order).
# Registers sockets again under a new lease (after the registry's server changed).
REGISTER = """
local n = #KEYS - 1
for i = 1, n do
  redis.call('ZADD', KEYS[i + 1], 0, ARGV[n + i])
  redis.call('SADD', KEYS[1], ARGV[i])
end
return n
"""

# KEYS: the user's sockets, the lease's users; ARGV: member, lease, user. The last socket of the
# user under the lease also takes the user off the lease's list.
UNREGISTER = """
redis.call('ZREM', KEYS[1], ARGV[1])
if #redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[2] .. '|', '(' .. ARGV[2] .. '}', 'LIMIT', 0, 1) == 0 then
  redis.call('SREM', KEYS[2], ARGV[3])
end
"""

# KEYS: LEASES_KEY; ARGV: grace (ms), how many users. One step of freeing a lease dead for longer
# than the grace of its sockets (their members share the lease's prefix: one lexicographic range
# per user). Returns how many users were freed, 0 when no dead lease is left. The keys are built
# here, from the lease's own list: the registry runs on one Redis (or a Sentinel-managed pair).
SWEEP = """
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', clock - tonumber(ARGV[1]), 'LIMIT', 0, 1)
if #dead == 0 then return 0 end
local lease = dead[1]
local users = 'chat:lease:' .. lease .. ':users'
local batch = redis.call('SPOP', users, tonumber(ARGV[2]))
for _, u in ipairs(batch) do
  redis.call('ZREMRANGEBYLEX', 'chat:sockets:' .. u, '[' .. lease .. '|', '(' .. lease .. '}')
end
if redis.call('SCARD', users) == 0 then redis.call('ZREM', KEYS[1], lease) end
return #batch + 1
"""


class Registry:
    def __init__(self, redis: Redis, lease_ms: int = LEASE_SECONDS * 1000) -> None:
        self.redis = redis
        self.lease_ms = lease_ms
        self._lookup = redis.register_script(LOOKUP)
        self._admit = redis.register_script(ADMIT)
        self._renew = redis.register_script(RENEW)
        self._take = redis.register_script(TAKE)
        self._register = redis.register_script(REGISTER)
        self._unregister = redis.register_script(UNREGISTER)
        self._sweep = redis.register_script(SWEEP)
        self._fresh = redis.register_script(FRESH)

    async def check(self) -> bool:
        """Readiness check: Redis answers."""
        return bool(await self.redis.ping())

    # ---- a gateway's lease ---------------------------------------------------------------

    async def take(self, lease: str) -> str:
        """Take ``lease`` (live for ``LEASE_SECONDS``); returns the Redis server's run id."""
        run = await self._take(
            keys=[SINCE_KEY, MASTER_KEY, LEASES_KEY], args=[now_ms(), LEASE_SECONDS * 2, lease, self.lease_ms]
        )
        return _text(run)

    async def renew(self, lease: str, run: str) -> tuple[str, str]:
        """Extend ``lease``, held on the server ``run``: ``("ok", run)``, ``("moved", new run)``
        (the registry is on another server now: take a new lease, register again) or ``("lapsed",
        run)`` (it expired here: nobody targeted its sockets for a while)."""
        status, now_run = await self._renew(
            keys=[SINCE_KEY, MASTER_KEY, LEASES_KEY],
            args=[now_ms(), LEASE_SECONDS * 2, lease, run, self.lease_ms],
        )
        return _text(status), _text(now_run)

    async def retire(self, lease: str) -> None:
        """End ``lease`` now (its sockets stop being targeted; a sweep frees them later)."""
        await self.redis.zadd(LEASES_KEY, {lease: 0}, xx=True)

    async def sweep(self, grace_ms: int = LEASE_SECONDS * 1000, batch: int = SWEEP_USERS) -> int:
        """One step of freeing dead leases' sockets: how many users it freed (0: nothing left)."""
        return int(await self._sweep(keys=[LEASES_KEY], args=[grace_ms, batch]))

    # ---- sockets --------------------------------------------------------------------------

    async def admit(self, lease: str, user_id: str, conn_id: str, limit: int) -> int:
        """Register a new socket under ``lease`` unless ``user_id`` already holds ``limit`` live
        ones (all gateways): 1 admitted, 0 refused, -1 the lease is not live (retry later)."""
        return int(
            await self._admit(
                keys=[
                    SINCE_KEY,
                    MASTER_KEY,
                    LEASES_KEY,
                    sockets_key(user_id),
                    legacy_key(user_id),
                    lease_users_key(lease),
                ],
                args=[now_ms(), LEASE_SECONDS * 2, lease, member(lease, conn_id), limit, user_id],
            )
        )

    async def register(self, lease: str, conns: Sequence[tuple[str, str]]) -> None:
        """Register ``(user_id, conn_id)`` sockets under ``lease`` (one call: keep batches small)."""
        if not conns:
            return
        await self._register(
            keys=[lease_users_key(lease), *(sockets_key(u) for u, _ in conns)],
            args=[*(u for u, _ in conns), *(member(lease, c) for _, c in conns)],
        )

    async def unregister(self, lease: str, user_id: str, conn_id: str) -> None:
        await self._unregister(
            keys=[sockets_key(user_id), lease_users_key(lease)], args=[member(lease, conn_id), lease, user_id]
        )

    async def instances(self, user_ids: list[str], fresh: Sequence[str] = ()) -> tuple[dict[str, set[str]], int | None]:
        """Gateway instances with a live lease holding each user's sockets, and the registry's
        start: one command, one round trip. ``fresh`` users are marked fresh in the same call
        (``FRESH_SECONDS``).

        A pipeline of commands per user costs redis-py a command's packing and parsing each; one
        script call for the whole batch costs that once.
        """
        since, *results = await self._lookup(
            keys=[
                SINCE_KEY,
                MASTER_KEY,
                LEASES_KEY,
                *map(sockets_key, user_ids),
                *map(legacy_key, user_ids),
                *map(fresh_key, fresh),
            ],
            args=[now_ms(), len(user_ids), FRESH_SECONDS * 1000],
        )
        found: dict[str, set[str]] = {}
        for user_id, instances in zip(user_ids, results):
            if instances:
                found[user_id] = {_text(i) for i in instances}
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def registry_trusted(since_ms: int | None, now: int) -> bool:
    """Lookups are complete once every gateway had time to register again since the (re)start."""
    return since_ms is not None and now - since_ms >= TRUST_SECONDS * 1000
