"""The connection registry (shared/registry.py) on a real Redis: a gateway's lease, not its sockets,
is what Redis keeps alive; the guarantees that rest on it."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from shared.registry import Registry, now_ms

from ..harness import System


async def commands_processed(client: aioredis.Redis) -> int:
    return int((await client.info("stats"))["total_commands_processed"])


async def test_idle_sockets_cost_redis_nothing_between_their_admission_and_their_close(system: System):
    """200 idle sockets held across more than one lease renewal: Redis sees the gateway's renewal,
    not one command per socket (the issue's budget: at most one per idle socket a minute)."""
    await system.start("gateway")
    clients = [await system.connect(f"idle-{i}") for i in range(200)]
    client = aioredis.Redis.from_url(system.stack.redis.url(system.redis_db))
    try:
        located, _ = await Registry(client).instances(["idle-0", "idle-199"])
        assert set(located) == {"idle-0", "idle-199"}  # every socket is registered...
        before = await commands_processed(client)
        await asyncio.sleep(12)  # ...and stays so across a renewal (every 10 s)
        during = await commands_processed(client) - before - 1  # our own INFO
        # a renewal and a sweep step (and the commands inside their scripts), health checks:
        # the budget, one command per idle socket a minute, would be 40; renewing each socket, 600
        assert during <= len(clients) * 12 / 60, during
        located, _ = await Registry(client).instances(["idle-0", "idle-199"])
        assert set(located) == {"idle-0", "idle-199"}
        for c in clients:
            assert c.closed_code is None
    finally:
        await client.aclose()


async def test_a_lapsed_lease_never_lives_again_and_a_sweep_frees_its_sockets(system: System):
    client = aioredis.Redis.from_url(system.stack.redis.url(system.redis_db))
    registry = Registry(client, lease_ms=1000)
    try:
        run = await registry.take("gw-a|1")
        for user in ("alice", "bob", "carol"):
            assert await registry.admit("gw-a|1", user, f"c-{user}", 10) == 1
        assert (await registry.instances(["alice", "bob"]))[0] == {"alice": {"gw-a"}, "bob": {"gw-a"}}
        await asyncio.sleep(1.2)  # the gateway died (or froze): its lease lapses
        assert (await registry.instances(["alice", "bob"]))[0] == {}  # nobody targets its sockets
        assert await registry.admit("gw-a|1", "dave", "c-dave", 10) == -1  # nor admits under it
        assert await registry.renew("gw-a|1", run) == ("lapsed", run)  # it does not come back
        assert (await registry.instances(["alice"]))[0] == {}
        assert await registry.sweep(grace_ms=0) == 4  # three users freed, in one step
        assert await registry.sweep(grace_ms=0) == 0
        assert await client.exists("chat:sockets:alice", "chat:lease:gw-a|1:users") == 0
        assert await client.zscore("chat:gateways", "gw-a|1") is None
    finally:
        await client.aclose()


async def test_the_socket_cap_counts_live_sockets_on_every_gateway_and_of_earlier_versions(system: System):
    """``CHAT_MAX_CONNECTIONS_PER_USER`` across gateways: sockets under another gateway's lease
    count, sockets registered by gateways of the previous layout count while their leases live,
    sockets of a gateway that shut down do not."""
    client = aioredis.Redis.from_url(system.stack.redis.url(system.redis_db))
    registry = Registry(client)
    try:
        await registry.take("gw-a|1")
        await registry.take("gw-b|1")
        assert await registry.admit("gw-a|1", "alice", "c1", 3) == 1
        assert await registry.admit("gw-b|1", "alice", "c2", 3) == 1
        await client.zadd("chat:conns:alice", {"gw-old|c0": now_ms() + 30_000})  # an older gateway's
        assert await registry.admit("gw-b|1", "alice", "c3", 3) == 0  # three live: refused
        assert (await registry.instances(["alice"]))[0] == {"alice": {"gw-a", "gw-b", "gw-old"}}
        await registry.retire("gw-a|1")  # gateway a shuts down
        assert (await registry.instances(["alice"]))[0] == {"alice": {"gw-b", "gw-old"}}
        assert await registry.admit("gw-b|1", "alice", "c3", 3) == 1
        await registry.unregister("gw-b|1", "alice", "c2")  # a socket closes
        assert await client.sismember("chat:lease:gw-b|1:users", "alice")  # c3 is still there
        await registry.unregister("gw-b|1", "alice", "c3")
        assert not await client.sismember("chat:lease:gw-b|1:users", "alice")
        assert await registry.admit("gw-b|1", "bob", "c4", 1) == 1  # another user is not affected
    finally:
        await client.aclose()


async def test_a_gateway_that_shuts_down_retires_its_lease_at_once(system: System):
    """A graceful stop ends the lease in one command: the notifier stops targeting its sockets at
    once, not after the lease would have lapsed; a later gateway sweeps the members."""
    gateway = await system.start("gateway")
    await system.connect("alice")
    client = aioredis.Redis.from_url(system.stack.redis.url(system.redis_db))
    registry = Registry(client)
    try:
        assert (await registry.instances(["alice"]))[0] != {}
        assert await asyncio.to_thread(gateway.terminate) == 0
        started = time.monotonic()
        assert (await registry.instances(["alice"]))[0] == {}
        assert time.monotonic() - started < 5
        await system.start("gateway")  # its first renewal sweeps the retired lease (no grace needed)
        deadline = time.monotonic() + 10
        while await client.exists("chat:sockets:alice") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert not await client.exists("chat:sockets:alice")
        assert await client.keys("chat:lease:*") == []  # its list of users went with it
        assert await client.zcard("chat:gateways") == 1  # only the new gateway's lease is left
    finally:
        await client.aclose()
