"""Clustered engines under load (docs/protocol.md section 4): a three-node RabbitMQ cluster, a
Postgres primary with a synchronous standby, Redis with Sentinel, all real servers
(devtools/cluster.py). Each test streams messages from 8 senders who resend as the contract asks,
takes one node or process away, and ends in the ledger check of the resilience tests: every
echoed send stored exactly once, ``seq`` gapless and never given twice, every open socket got
every message or was closed so it could catch up; and service resumes within 30 s.

Both ways of reaching an engine are used in every test: half the services reach it through one
address in front of it (a TCP proxy, as a Kubernetes Service), the others list its hosts.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from devtools.cluster import SENTINEL_MASTER, PostgresPair, RabbitCluster, RedisSentinels
from devtools.proxy import TcpProxy
from devtools.stack import Stack, metric_sum
from shared.migrate import migrate
from shared.registry import TRUST_SECONDS, Registry, now_ms, registry_trusted

from ..harness import System, WsClient, token
from .test_resilience import check_guarantees, pairs_of, reliable_sender, wait_all_received, wait_until

BASE = 27440  # the session's one-node servers use 27431-27435
SENDERS = 8
PER_SENDER = 80
RESUMES_WITHIN = 30.0  # docs/protocol.md section 4


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    state = Path(tempfile.mkdtemp(prefix="chat-cluster-"))
    state.chmod(0o755)
    cluster = RabbitCluster.at(
        state, [(BASE + 8, BASE + 9), (BASE + 10, BASE + 11), (BASE + 12, BASE + 13)], BASE + 14, f"chat{BASE}"
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class Clustered:
    """One test's system on clustered engines, and what the test may do to them."""

    system: System
    rabbit: RabbitCluster
    postgres: PostgresPair
    redis: RedisSentinels
    proxies: dict[str, TcpProxy]

    def via_proxy(self) -> dict[str, str]:
        """Settings that reach every engine through one address (the proxies)."""
        p = self.proxies
        return {
            "CHAT_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{p['amqp'].port}/{self.system.vhost}",
            "CHAT_DATABASE_URL": f"postgresql://chat@127.0.0.1:{p['postgres'].port}/chat",
            "CHAT_REDIS_URL": f"redis://127.0.0.1:{p['redis'].port}/0",
            "CHAT_REDIS_SENTINELS": "",
            "CHAT_REDIS_SENTINEL_MASTER": "",
        }

    async def start(self, name: str, proxy: bool) -> None:
        await self.system.start(name, env=self.via_proxy() if proxy else None)

    async def queues(self, *columns: str) -> list[list[str]]:
        """``rabbitmqctl list_queues`` of this test's vhost (off the event loop, where the proxies run)."""
        out = await asyncio.to_thread(
            self.rabbit.ctl, "list_queues", "-p", self.system.vhost, "name", *columns, "--quiet", "--no-table-headers"
        )
        return [line.split("\t") for line in out.stdout.splitlines() if line.strip()]  # a column may be empty

    async def follow_redis_master(self, old: tuple[str, int]) -> None:
        """Point the Redis proxy at the master the Sentinels elected instead of ``old``, as the
        operator's Service does."""

        async def elected() -> tuple[str, int] | None:
            address = await asyncio.to_thread(self.redis.elected)
            return address if address != old else None

        self.proxies["redis"].upstreams = [await wait_for_value(elected, 30)]


@pytest_asyncio.fixture(loop_scope="session")
async def clustered(
    stack: Stack, rabbit_cluster: RabbitCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Clustered]:
    await restart_stopped(rabbit_cluster)
    standby_options = getattr(request, "param", "")  # a test may ask for a late standby
    state = Path(tempfile.mkdtemp(prefix="chat-engines-"))  # not under tmp_path: postgres must reach it
    state.chmod(0o755)
    postgres = PostgresPair.at(state / "postgres", BASE + 1, BASE + 2, standby_options=standby_options)
    redis = RedisSentinels.at(state / "redis", BASE + 3, BASE + 4, [BASE + 5, BASE + 6, BASE + 7])
    vhost = f"t_{uuid.uuid4().hex[:12]}"
    proxies: dict[str, TcpProxy] = {}
    system: System | None = None
    try:
        started = await asyncio.gather(
            asyncio.to_thread(postgres.start), asyncio.to_thread(redis.start), return_exceptions=True
        )
        for failure in started:  # both finished (so the teardown stops whatever did start)
            if isinstance(failure, BaseException):
                raise failure
        await migrate(postgres.dsn())
        await asyncio.to_thread(rabbit_cluster.add_vhost, vhost)
        proxies = {
            "amqp": await TcpProxy.start([("127.0.0.1", n.port) for n in rabbit_cluster.nodes]),
            "postgres": await TcpProxy.start([("127.0.0.1", postgres.primary.port)]),
            "redis": await TcpProxy.start([("127.0.0.1", redis.master.port)]),
        }
        engines = {
            "CHAT_DATABASE_URL": postgres.dsn(),
            "CHAT_AMQP_URL": ",".join(rabbit_cluster.urls(vhost)),
            "CHAT_REDIS_URL": "",
            "CHAT_REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in redis.addresses),
            "CHAT_REDIS_SENTINEL_MASTER": SENTINEL_MASTER,
        }
        system = System(
            stack=stack,
            workdir=tmp_path,
            database="chat",
            vhost=vhost,
            redis_db=0,
            engines=engines,
            ctl=rabbit_cluster.ctl,
        )
        yield Clustered(system, rabbit_cluster, postgres, redis, proxies)
        assert not [v for c in system.clients for v in c.violations]
    finally:
        if system is not None:
            await system.close()
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                print(system.logs())
        for proxy in proxies.values():
            await proxy.close()
        await asyncio.gather(asyncio.to_thread(redis.stop), asyncio.to_thread(postgres.stop))
        shutil.rmtree(state, ignore_errors=True)
        await restart_stopped(rabbit_cluster)  # deleting a vhost waits for every node of its quorum queues
        await asyncio.to_thread(rabbit_cluster.ctl, "delete_vhost", vhost, check=False)


async def restart_stopped(cluster: RabbitCluster) -> None:
    """Start the nodes a test killed; wait until all three run together."""
    await asyncio.gather(*(asyncio.to_thread(node.start) for node in cluster.nodes if node.proc is None))
    await asyncio.to_thread(cluster.wait_members, len(cluster.nodes))


T = TypeVar("T")


async def wait_for_value(get: Callable[[], Awaitable[T | None]], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await get()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("no value in time")
        await asyncio.sleep(0.2)


def longest_pause(senders: list[WsClient], since: float) -> float:
    """The longest time after ``since`` (loop time) in which no sender got an echo: how long the
    service stopped. Senders send without pause and resend whatever is not echoed in 5 s."""
    times = sorted(
        at
        for sender in senders
        for frame, at in zip(sender.frames, sender.arrived)
        if frame.get("type") == "new-message" and frame["senderId"] == sender.user and at >= since
    )
    return max((b - a for a, b in zip([since, *times], times)), default=float("inf"))


async def stream_through(clustered: Clustered, tag: str, outage: Callable[[], Awaitable[float | None]]) -> list:
    """8 senders on two gateways stream while ``outage`` runs, once 150 messages are stored; then
    the ledger is checked, and that echoes did not pause for more than 30 s after the outage began
    (or after the moment ``outage`` returns, for an outage that lasts on purpose)."""
    system = clustered.system
    pairs = await pairs_of(system, SENDERS, tag, catch_up=True)
    senders = [asyncio.create_task(reliable_sender(s, cid, PER_SENDER, s.user, 0.05)) for s, _, cid in pairs]
    await wait_until(lambda: _stored_at_least(system, 150), timeout=60)
    started = asyncio.get_running_loop().time()
    started = await outage() or started
    await asyncio.wait_for(asyncio.gather(*senders), timeout=240)
    await wait_all_received(pairs, PER_SENDER, timeout=60)
    assert await check_guarantees(system, pairs) == PER_SENDER * SENDERS
    pause = longest_pause([s for s, _, _ in pairs], started)
    print(f"{tag}: the longest pause in echoes was {pause:.1f} s")
    assert pause <= RESUMES_WITHIN, f"no echo for {pause:.1f} s"
    return pairs


async def _stored_at_least(system: System, n: int) -> bool:
    try:
        return await system.count_messages() >= n
    except OSError:
        return False


async def start_services(clustered: Clustered, writers: int = 1, notifiers: int = 1) -> None:
    """Two gateways, the writers, the notifiers and a query service; every other one of each
    kind reaches the engines through the proxies, the rest by their lists of hosts."""
    names = ["writer"] * writers + ["notifier"] * notifiers + ["gateway", "gateway", "query"]
    counts: dict[str, int] = {}
    starts = []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        starts.append(clustered.start(name, proxy=counts[name] % 2 == 1))
    await asyncio.gather(*starts)


def node_of_pid(pid: str) -> str:
    """The node of an Erlang pid as rabbitmqctl prints it: ``<chat27440-0@localhost.1.2.3>``."""
    match = re.match(r"<([^.]+@[^.]+)\.", pid)
    assert match, pid
    return match[1]


# ---- RabbitMQ ------------------------------------------------------------------------------------


async def test_kill_9_of_the_rabbitmq_node_leading_the_most_command_queues(clustered):
    await start_services(clustered)
    leaders = [leader for name, leader in await clustered.queues("leader") if name.startswith("chat.commands.")]
    busiest = max(set(leaders), key=leaders.count)
    node = clustered.rabbit.node_named(busiest)

    async def outage() -> None:
        await asyncio.to_thread(node.kill)
        await asyncio.sleep(5)
        await asyncio.to_thread(node.start)  # and back, while the others carry on

    await stream_through(clustered, "leader", outage)
    members = {name: members for name, members in await clustered.queues("members")}
    assert all(busiest in members[q] for q in members if q.startswith("chat.commands."))  # it rejoined each queue


async def test_kill_9_of_the_rabbitmq_node_holding_the_gateways_queues(clustered):
    await start_services(clustered)
    holders = [node_of_pid(pid) for name, pid in await clustered.queues("pid") if name.startswith("chat.gateway.")]
    assert len(holders) == 2
    node = clustered.rabbit.node_named(max(set(holders), key=holders.count))

    async def outage() -> None:
        await asyncio.to_thread(node.kill)

    pairs = await stream_through(clustered, "gwq", outage)
    # every gateway queue is declared again, on a node that lives, each with its consumer
    queues = {name: int(consumers) for name, consumers in await clustered.queues("consumers")}
    assert len([q for q in queues if q.startswith("chat.gateway.")]) == 2
    assert all(queues[q] == 1 for q in queues if q.startswith("chat.gateway."))
    assert any(client.restarts for pair in pairs for client in pair[:2])  # its clients were told to reconnect


async def test_two_of_three_rabbitmq_nodes_down_for_20_s_confirm_nothing_unstored(clustered):
    """The surviving node is a minority: it pauses (pause_minority), so nothing is confirmed while
    two nodes are down; senders are told ``unavailable`` and resend; nothing is lost or doubled."""
    await start_services(clustered)
    down = clustered.rabbit.nodes[1:]

    async def outage() -> float:
        await asyncio.gather(*(asyncio.to_thread(n.kill) for n in down))
        await asyncio.sleep(20)
        await asyncio.gather(*(asyncio.to_thread(n.start) for n in down))
        return asyncio.get_running_loop().time()  # service resumes within 30 s of the nodes' return

    await stream_through(clustered, "minority", outage)


# ---- Postgres ------------------------------------------------------------------------------------


async def test_kill_9_of_the_postgres_primary_and_its_synchronous_standby_promoted(clustered):
    """Two writers: one reaches Postgres through the proxy (switched to the standby once it is
    promoted, as the operator's -rw Service is), one by the list of hosts (it finds the new
    primary itself). A commit returned only once the standby had it, so nothing is lost."""
    await start_services(clustered, writers=2)

    async def outage() -> None:
        await asyncio.to_thread(clustered.postgres.primary.kill)
        await asyncio.sleep(2)  # an operator's fail-over takes a moment to decide
        await asyncio.to_thread(clustered.postgres.promote_standby)
        clustered.proxies["postgres"].upstreams = [("127.0.0.1", clustered.postgres.standby.port)]

    await stream_through(clustered, "pg", outage)
    for writer in clustered.system.of("writer"):
        assert '"batch_stored"' in writer.output()


# ---- Redis ---------------------------------------------------------------------------------------


async def test_kill_9_of_the_redis_master_and_sentinel_fails_over_with_sockets_open(clustered):
    """The services follow the master Sentinel elects (or the proxy, switched to it). Leases
    written just before the crash may not have reached the replica: the registry restarts on the
    new master, and notifiers broadcast until every gateway re-registered, so no socket that
    stays open misses a message, and none is closed."""
    await start_services(clustered, notifiers=2)

    async def outage() -> None:
        await asyncio.to_thread(clustered.redis.master.kill)
        await clustered.follow_redis_master(old=("127.0.0.1", clustered.redis.master.port))

    pairs = await stream_through(clustered, "redis", outage)
    assert clustered.redis.elected() == ("127.0.0.1", clustered.redis.replica.port)
    for client in [c for pair in pairs for c in pair[:2]]:
        assert client.restarts == 0 and client.closed_code is None  # open across the fail-over


async def test_a_redis_fail_over_that_lost_leases_makes_notifiers_broadcast_until_gateways_re_register(tmp_path):
    """Replication is asynchronous: a replica promoted after missing the last writes lacks the
    leases written last. The registry finds another master serving it and starts again, so
    lookups are not trusted (the notifier broadcasts) until every gateway has re-registered."""
    state = Path(tempfile.mkdtemp(prefix="chat-redis-"))
    pair = RedisSentinels.at(state, BASE + 3, BASE + 4, [])
    try:
        await asyncio.to_thread(pair.start)
        master = Registry(aioredis.Redis(port=pair.master.port))
        run = await master.take("gw-1|a")
        assert await master.admit("gw-1|a", "alice", "c1", 10) == 1
        await asyncio.sleep(TRUST_SECONDS + 1)  # the registry is trusted from now on
        assert await master.renew("gw-1|a", run) == ("ok", run)
        located, since = await master.instances(["alice"])
        assert located == {"alice": {"gw-1"}} and registry_trusted(since, now_ms())
        await asyncio.to_thread(RedisSentinels.wait_replicating, pair.replica.port)
        replica = aioredis.Redis(port=pair.replica.port)
        await replica.execute_command("REPLICAOF", "NO", "ONE")  # it stops taking the master's writes...
        await master.take("gw-2|a")
        assert await master.admit("gw-2|a", "bob", "c2", 10) == 1  # ...so it misses gateway 2 and bob
        await asyncio.to_thread(pair.master.kill)  # and is what is left: promoted, as Sentinel would
        promoted = Registry(replica)
        located, since = await promoted.instances(["alice", "bob"])
        assert located == {"alice": {"gw-1"}}  # bob's socket is open, but the registry lost it
        assert not registry_trusted(since, now_ms())  # so nobody trusts it: the notifier broadcasts
        assert since >= now_ms() - 1000  # from now, until the gateways had time to register again
        assert (await promoted.freshness("carol"))[0] == since  # the query service reads from the primary meanwhile
        status, new_run = await promoted.renew("gw-2|a", run)  # gateway 2's next renewal finds another server...
        assert status == "moved" and new_run != run
        assert await promoted.take("gw-2|b") == new_run  # ...takes a new lease and registers its sockets
        await promoted.register("gw-2|b", [("bob", "c2")])
        assert (await promoted.instances(["bob"]))[0] == {"bob": {"gw-2"}}
        await replica.aclose()
        await master.redis.aclose()
    finally:
        await asyncio.to_thread(pair.stop)
        shutil.rmtree(state, ignore_errors=True)


# ---- frozen processes (the session's one-node servers suffice) ------------------------------------


async def test_a_frozen_writer_and_notifier_hand_their_partitions_over_within_20_s(system):
    """SIGSTOP for 45 s: the broker ends a connection that stops answering its heartbeat, and the
    replicas that took the frozen ones' leases over take their partitions; messages keep flowing."""
    writers = [await system.start("writer") for _ in range(2)]
    notifiers = [await system.start("notifier") for _ in range(2)]
    await system.start_all(writers=0, notifiers=0, gateways=2, query=True)
    await wait_until(lambda: _split(system, 2), timeout=30)  # each holds two partitions of each kind
    pairs = await pairs_of(system, SENDERS, "frozen", catch_up=True)
    senders = [asyncio.create_task(reliable_sender(s, cid, PER_SENDER * 2, s.user, 0.05)) for s, _, cid in pairs]
    await wait_until(lambda: _stored_at_least(system, 150), timeout=60)
    frozen = [writers[0], notifiers[0]]
    for service in frozen:
        service.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        survivors = {s.port for s in (writers[1], notifiers[1])}

        async def moved() -> bool:
            active = system.active_consumers("chat.")
            owners = {q: inst for q, inst in active.items() if q.startswith(("chat.commands.", "chat.events."))}
            return len(owners) == 8 and all(int(inst.rsplit("-", 1)[1]) in survivors for inst in owners.values())

        await wait_until(moved, timeout=20, interval=0.5)
        handed_over = time.monotonic() - stopped
        print(f"frozen: every partition consumed by the others {handed_over:.1f} s after the freeze")
        await asyncio.sleep(max(0.0, 45 - (time.monotonic() - stopped)))
    finally:
        for service in frozen:
            service.proc.send_signal(signal.SIGCONT)
    await asyncio.wait_for(asyncio.gather(*senders), timeout=240)
    await wait_all_received(pairs, PER_SENDER * 2, timeout=60)
    assert await check_guarantees(system, pairs) == PER_SENDER * 2 * SENDERS
    assert handed_over <= 20
    await wait_until(lambda: _split(system, 2), timeout=30)  # back from the freeze, they share again


async def _split(system: System, each: int) -> bool:
    """Every partition queue has an active consumer, and each instance holds ``each`` of them."""
    active = system.active_consumers("chat.")
    owners = [inst for q, inst in active.items() if q.startswith(("chat.commands.", "chat.events."))]
    return len(owners) == 8 and all(owners.count(o) == each for o in set(owners))


# ---- reads from a standby ------------------------------------------------------------------------


@pytest.mark.parametrize("clustered", ["-c recovery_min_apply_delay=4s"], indirect=True)
async def test_reads_from_a_late_standby_still_show_what_the_user_just_sent(clustered):
    """The query service reads from a standby that applies everything 4 s late. The sender's next
    read still shows the message just echoed (and the reader's, their read): those users read from
    the primary while their change is fresh; a user with nothing fresh reads from the standby."""
    system = clustered.system
    read_url = {"CHAT_DATABASE_READ_URL": clustered.postgres.read_dsn()}
    for name in ("writer", "notifier", "gateway"):
        await system.start(name)
    query = await system.start("query", env=read_url)
    alice, bob = await system.connect("alice"), await system.connect("bob")
    cid = await system.conversation(["alice", "bob"])
    await asyncio.sleep(
        TRUST_SECONDS + 1
    )  # the registry must have run for its freshness window before a standby serves anyone
    await alice.send_message(cid, "just now", temp_id="now")
    echo = await alice.wait_frame(type="new-message", tempMessageId="now")
    mine = await _rest(query.url, "alice", f"/conversations/{cid}/messages?limit=10&afterSeq=0")
    assert [m["messageId"] for m in mine] == [echo["messageId"]]
    standby = await asyncpg.connect(f"postgresql://chat@127.0.0.1:{clustered.postgres.standby.port}/chat")
    try:
        assert await standby.fetchval("SELECT count(*) FROM messages") == 0  # the standby really is behind
    finally:
        await standby.close()
    await bob.send({"action": "read-messages", "conversationId": str(cid)})
    await bob.wait_frame(type="read-messages", lastReadSeq=1)
    [listed] = await _rest(query.url, "bob", "/conversations")
    assert (listed["lastReadSeq"], listed["isRead"]) == (1, True)
    standby_reads = await _standby_reads(query.url)
    assert await _rest(query.url, "carol", "/conversations") == []  # carol has nothing fresh
    assert await _standby_reads(query.url) == standby_reads + 1


async def _rest(url: str, user: str, path: str) -> object:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + path, headers={"Authorization": token(user)}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def _standby_reads(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        return metric_sum(await resp.text(), "chat_query_reads_total", 'target="standby"')
