"""Load generator for the real-time path: send-to-delivery latency and delivered messages/s.

It starts its own private Postgres, Redis and RabbitMQ (devtools/stack.py, ports 26431-26435, services from 26501)
and the services, as processes on this machine, creates ``--users`` users in conversations of
``--size``, opens one WebSocket per user and sends at ``--rate`` messages/s in total, spread
evenly over the users. Latency is measured from just before a send to the arrival of the
``new-message`` frame at each participant's connection (the sender's echo included).

    python -m bench.load --users 500 --size 5 --rate 1000 --seconds 20
    python -m bench.load --users 500 --size 5 --step 250,500,1000,2000,3000 --seconds 15

Step mode runs each rate in turn and reports the highest one that kept p99 <= 200 ms with
nothing lost. ``--peer`` measures the peer of issue 11 instead (bench/peer: Django Channels'
chat tutorial saving each message through the ORM, one daphne process; the ``peer`` extra).
``--cluster`` runs the services on clustered engines instead (devtools/cluster.py: three RabbitMQ
nodes, a Postgres primary with a synchronous standby, Redis with Sentinel; ports 26441-26454),
reached by their lists of hosts, as ``make run CLUSTER=1`` runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import msgspec

from bench import cpu
from bench.sockets import SECRET, Holders
from devtools.stack import metric_sum, private_cluster, private_system, service_env, spawn_service, wait_ready
from shared import stalls
from shared.auth import mint
from shared.db import session_target
from shared.registry import TRUST_SECONDS
from shared.service import install_uvloop, tune_gc
from shared.settings import DEFAULT_PARTITIONS

BIN = Path(sys.executable).parent


class Received(msgspec.Struct):
    """The fields of a server frame the generator reads; the rest (the content) is skipped unread."""

    type: str = ""
    messageId: str = ""  # noqa: N815 (the wire's name)
    tempMessageId: str = ""  # noqa: N815
    code: str = ""


decoder = msgspec.json.Decoder(Received)


class GeneratorStalls:
    """The load generator's own longest loop lag and GC pause (shared/stalls.py measures them):
    a stall here is not the system's."""

    def __init__(self) -> None:
        self.lag = 0.0
        self.gc = 0.0
        self.timer = stalls.GcTimer(self._paused)
        self.timer.install()

    def _paused(self, pause: float, info: dict) -> None:
        self.gc = max(self.gc, pause)

    def _lagged(self, lag: float) -> None:
        self.lag = max(self.lag, lag)

    async def watch(self) -> None:
        await stalls.watch_loop(self._lagged, tick=0.02)

    def take(self) -> tuple[float, float]:
        out = (self.lag, self.gc)
        self.lag = self.gc = 0.0
        return out


class MachineWatch:
    """The machine's busy, iowait and steal shares through a step, sampled every half second, so
    a slow second can be told apart: a saturated machine, a disk that stalls fsyncs, the host."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, list[int]]] = []

    async def watch(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), cpu.machine()))
            if len(self.samples) > 2400:  # 20 minutes: a step's window is far shorter
                del self.samples[:1200]
            await asyncio.sleep(0.5)

    def during(self, start: float, end: float) -> str:
        """The shares over [start, end] (perf_counter seconds), widened to the samples around it."""
        now = time.perf_counter()
        before = [s for s in self.samples if s[0] <= start]
        after = [s for s in self.samples if s[0] >= min(end, now)] or [(now, cpu.machine())]
        if not before:
            return "machine not sampled"
        split = cpu.machine_shares(before[-1][1], after[0][1])
        return ", ".join(f"{name} {value:.0f} %" for name, value in split.items())


@dataclass
class Stats:
    sent_at: dict[str, int] = field(default_factory=dict)  # tempMessageId -> ns
    latencies: list[float] = field(default_factory=list)  # ms
    worst: tuple[float, float] = (0.0, 0.0)  # (latency ms, seconds into the step it was sent)
    step_started_ns: int = 0
    step: int = 0  # in every tempMessageId, so a rate run twice is not taken for retries
    by_second: dict[int, float] = field(default_factory=dict)  # second of the step -> worst latency sent in it
    delivered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seen: dict[int, set[str]] = field(default_factory=dict)  # connection -> messageIds it received
    typing: int = 0  # typing frames received


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def reader(index: int, ws: aiohttp.ClientWebSocketResponse, stats: Stats) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        now = time.perf_counter_ns()
        frame = decoder.decode(msg.data)
        kind = frame.type
        if kind == "new-message":
            seen = stats.seen.setdefault(index, set())  # strings only: nothing for the collector to track
            if frame.messageId in seen:
                continue
            seen.add(frame.messageId)
            started = stats.sent_at.get(frame.tempMessageId)
            if started is not None:
                latency = (now - started) / 1e6
                stats.latencies.append(latency)
                second = int((started - stats.step_started_ns) / 1e9)
                stats.by_second[second] = max(stats.by_second.get(second, 0.0), latency)
                if latency > stats.worst[0]:
                    stats.worst = (latency, (started - stats.step_started_ns) / 1e9)
            stats.delivered += 1
        elif kind == "typing":
            stats.typing += 1
        elif kind == "error":
            stats.errors[frame.code] = stats.errors.get(frame.code, 0) + 1


async def run_step(
    conns,
    conversations,
    size: int,
    rate: float,
    seconds: float,
    stats: Stats,
    typing: bool = False,
    chars: int = 100,
) -> dict:
    users = len(conns)
    per_user_interval = users / rate
    sent = 0
    expected = 0  # frames: one per member of each message's conversation
    start_delivered = stats.delivered
    start_typing = stats.typing
    content = "x" * chars
    typing_frames = {
        cid: msgspec.json.encode({"action": "typing", "conversationId": cid}).decode() for cid in conversations
    }
    stats.latencies.clear()
    stats.worst = (0.0, 0.0)
    stats.by_second.clear()
    stats.step += 1
    started = time.perf_counter()
    stats.step_started_ns = int(started * 1e9)
    began = time.strftime("%H:%M:%S", time.gmtime()) + " UTC"
    deadline = started + seconds

    async def sender(i: int) -> None:
        nonlocal sent, expected
        ws = conns[i]
        cid = conversations[i // size]
        next_at = started + random.random() * per_user_interval
        n = 0
        while True:
            now = time.perf_counter()
            if next_at >= deadline:
                await asyncio.sleep(max(0.0, deadline - now))
                return
            if typing:  # as a client does: "typing" while the message is written, half an interval before it
                typing_at = next_at - min(per_user_interval / 2, 1.0)
                if typing_at > now:
                    await asyncio.sleep(typing_at - now)
                await ws.send_str(typing_frames[cid])
                now = time.perf_counter()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            temp_id = f"{i}-{stats.step}-{n}"
            n += 1
            stats.sent_at[temp_id] = time.perf_counter_ns()
            await ws.send_str(
                msgspec.json.encode(
                    {"action": "send-message", "tempMessageId": temp_id, "conversationId": cid, "content": content}
                ).decode()
            )
            sent += 1
            expected += min(size, users - i // size * size)  # the last conversation may be smaller
            next_at += per_user_interval

    await asyncio.gather(*(sender(i) for i in range(users)))
    send_seconds = time.perf_counter() - started
    drain_deadline = time.perf_counter() + 10
    while stats.delivered - start_delivered < expected and time.perf_counter() < drain_deadline:
        await asyncio.sleep(0.05)
    delivered = stats.delivered - start_delivered
    drain_seconds = time.perf_counter() - started - send_seconds
    return {
        "began": began,
        "drain_seconds": drain_seconds,
        "rate": rate,
        "sent": sent,
        "send_rate": round(sent / send_seconds, 1),
        "delivered_per_s": round(delivered / send_seconds, 1),
        "expected": expected,
        "lost": expected - delivered,
        "max_ms": round(stats.worst[0], 1),
        "slow_seconds": {k: round(v) for k, v in sorted(stats.by_second.items()) if v > 300},
        "worst_at_s": round(stats.worst[1], 2),
        "seconds": send_seconds,
        "started": started,
        "errors": dict(stats.errors),
        "typing_per_s": round((stats.typing - start_typing) / send_seconds, 1),
    }


WORK_METRIC = {"writer": "chat_messages_stored_total", "notifier": "chat_frames_routed_total"}


FIRST_PORT = 26501  # the first service's port, the rest follow it
PEER_PORT = FIRST_PORT  # the peer runs instead of the services, never beside them


async def start_services(
    env: dict[str, str],
    args: argparse.Namespace,
    state: Path,
    procs: list,
    gateway_ports: list[int],
    ports: dict[str, list[int]],
) -> None:
    started = []
    port = FIRST_PORT
    for name, count in (("writer", args.writers), ("notifier", args.notifiers), ("gateway", args.gateways)):
        for _ in range(count):
            procs.append(spawn_service(name, {**env, "CHAT_PORT": str(port)}, state / f"{name}-{port}.log"))
            started.append((port, procs[-1]))  # in procs at once: the caller stops whatever started
            (gateway_ports if name == "gateway" else ports[name]).append(port)
            port += 1
    for p, proc in started:
        await wait_ready(f"http://127.0.0.1:{p}", proc=proc)


async def start_peer(stack, state: Path, procs: list, conn_max_age: int) -> None:
    """bench/peer's table in the same private Postgres, then one daphne serving it."""
    env = {
        **os.environ,
        "PEER_DB_PORT": str(stack.postgres.port),
        "PEER_CONN_MAX_AGE": str(conn_max_age),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    subprocess.run([sys.executable, "-m", "bench.peer"], env=env, check=True)
    with open(state / "daphne.log", "ab") as log:
        procs.append(
            subprocess.Popen(
                [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(PEER_PORT), "bench.peer.asgi:application"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    await wait_ready(f"http://127.0.0.1:{PEER_PORT}", proc=procs[-1])


async def create_conversations(dsn: str, users: list[str], conversations: list[str], size: int) -> None:
    """Users in order, ``size`` to a conversation (the last may be smaller), as the senders pick them."""
    conn = await asyncpg.connect(dsn, target_session_attrs=session_target(dsn))  # the primary, of several hosts
    for g, cid in enumerate(conversations):
        members = users[g * size : (g + 1) * size]
        await conn.execute(
            "INSERT INTO conversations (id, title, is_group, created_by) VALUES ($1,'b',true,$2)", cid, members[0]
        )
        await conn.executemany(
            "INSERT INTO participants (conversation_id, user_id) VALUES ($1, $2)", [(cid, m) for m in members]
        )
    await conn.close()


async def work_done(session: aiohttp.ClientSession, ports: dict[str, list[int]]) -> dict[str, list[float]]:
    """Each writer's stored messages and each notifier's routed frames so far, from /metrics."""
    out: dict[str, list[float]] = {}
    for name, plist in ports.items():
        out[name] = []
        for port in plist:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            out[name].append(metric_sum(text, WORK_METRIC[name]))
    return out


HOPS = (
    ("stored", "chat_writer_command_age_seconds", ""),
    ("routed", "chat_notifier_event_age_seconds", ""),
    ("on socket", "chat_message_delivery_seconds", ""),
    ("writer batch", "chat_writer_batch_seconds", ""),
    ("notifier batch", "chat_notifier_batch_seconds", ""),
    ("command confirm", "chat_amqp_publish_seconds", 'exchange="chat.commands"'),
    ("event confirm", "chat_amqp_publish_seconds", 'exchange="chat.events"'),
    ("delivery confirm", "chat_amqp_publish_seconds", 'exchange="chat.deliveries"'),
)
SIZES = (
    ("commands per flush", "chat_gateway_flush_commands", ""),
    ("per writer batch", "chat_writer_batch_commands", ""),
)
# How the work is batched: AMQP messages published a second on each hop (the counts of the confirm
# histograms above) and the commands in each gateway flush and writer batch. At low rates every hop
# carries one message; the CPU per message falls as these grow.
RATES = (
    ("commands published/s", "command confirm"),
    ("events/s", "event confirm"),
    ("deliveries/s", "delivery confirm"),
    ("notifier batches/s", "notifier batch"),
)


def cpu_groups(stack, procs) -> dict[str, list[int]]:
    """The processes whose CPU the benchmark reports: each service kind, and each server (every
    node of a clustered one)."""
    groups: dict[str, list[int]] = {}
    for proc in procs:
        name = Path(proc.args[0]).name.removeprefix("chat-")
        groups.setdefault(name, []).append(proc.pid)
    servers = stack.cpu_roots()
    if "daphne" in groups:  # the peer uses Postgres alone
        servers = {"postgres": servers["postgres"]}
    return groups | servers


async def hops(
    session: aiohttp.ClientSession, ports: dict[str, list[int]], gateway_ports: list[int]
) -> dict[str, tuple[float, float]]:
    """(sum, count) of each hop-latency and batch-size histogram, over every replica."""
    pages = []
    for port in [*ports.get("writer", []), *ports.get("notifier", []), *gateway_ports]:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            pages.append(await response.text())
    return {
        hop: (
            sum(metric_sum(t, f"{name}_sum", label) for t in pages),
            sum(metric_sum(t, f"{name}_count", label) for t in pages),
        )
        for hop, name, label in (*HOPS, *SIZES)
    }


def batching_report(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], seconds: float
) -> str:
    parts = [f"{label} {(after[hop][1] - before[hop][1]) / seconds:.0f}" for label, hop in RATES]
    for label, _, _ in SIZES:
        total, count = after[label][0] - before[label][0], after[label][1] - before[label][1]
        parts.append(f"{label} {total / count:.1f}" if count else f"{label} -")
    return ", ".join(parts)


def hop_report(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> str:
    parts = []
    for hop, _, _ in HOPS:
        seconds, count = after[hop][0] - before[hop][0], after[hop][1] - before[hop][1]
        parts.append(f"{hop} {1000 * seconds / count:.1f}" if count else f"{hop} -")
    return ", ".join(parts)


def shares(before: list[float], after: list[float]) -> list[float]:
    done = [a - b for a, b in zip(after, before)]
    total = sum(done) or 1.0
    return [d / total for d in done]


async def main_async(args: argparse.Namespace) -> None:
    servers = (
        private_cluster("chat-bench-", 26440) if args.cluster else private_system("chat-bench-", 26430, fsync=True)
    )
    async with servers as (stack, state, procs):
        dsn = stack.env()["CHAT_DATABASE_URL"]
        env = {
            **os.environ,
            **service_env(stack, SECRET),
            "CHAT_HOST": "127.0.0.1",
            "CHAT_LOG_LEVEL": "warning",
            "CHAT_PARTITIONS": str(args.partitions),
        }
        gateway_ports: list[int] = []
        ports: dict[str, list[int]] = {} if args.peer else {"writer": [], "notifier": []}
        if args.peer:
            await start_peer(stack, state, procs, args.peer_conn_max_age)
        else:
            await start_services(env, args, state, procs, gateway_ports, ports)
        if args.idle:  # idle sockets of other users beside the active ones (bench/sockets.py)
            holders = Holders(gateway_ports, args.idle, 10_000)
            procs.extend(holders.procs)  # stopped with the services
            connected, failed = await asyncio.to_thread(holders.opened)
            print(
                f"# {connected} idle sockets held ({failed} failed), {holders.rss() / 2**20:.0f} MiB in their holders"
            )
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            users = [f"u{i}" for i in range(args.users)]
            conversations = [str(uuid.uuid4()) for _ in range(0, len(users), args.size)]
            if not args.peer:
                await create_conversations(dsn, users, conversations, args.size)
            conns = []
            for i, user in enumerate(users):
                if args.peer:
                    url = f"http://127.0.0.1:{PEER_PORT}/ws/chat/{conversations[i // args.size]}/?user={user}"
                else:
                    gw = gateway_ports[i % len(gateway_ports)]
                    url = f"http://127.0.0.1:{gw}/?Authorization={mint(SECRET, user)}"
                conns.append(await session.ws_connect(url, max_msg_size=0))
            stats = Stats()
            readers = [asyncio.create_task(reader(i, ws, stats)) for i, ws in enumerate(conns)]
            await asyncio.sleep(2 if args.peer else TRUST_SECONDS + 1)  # the registry is trusted from then on

            rates = [float(r) for r in args.step.split(",")] if args.step else [args.rate]
            best = None
            print(
                f"# {args.users} users, conversations of {args.size}, messages of {args.chars} characters, "
                + (
                    f"the peer (Django Channels' tutorial, ORM save, CONN_MAX_AGE {args.peer_conn_max_age}, one daphne), "
                    if args.peer
                    else f"{args.gateways} gateway(s), {args.writers} writer(s), {args.notifiers} notifier(s), "
                )
                + f"{args.seconds}s per step; "
                f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
                flush=True,
            )
            print("rate  sent/s  delivered/s  p50_ms  p99_ms  max_ms  lost  errors", flush=True)
            work = await work_done(session, ports)
            groups = cpu_groups(stack, procs)
            generator_stalls = GeneratorStalls()
            stall_watch = asyncio.create_task(generator_stalls.watch())
            machine = MachineWatch()
            machine_watch = asyncio.create_task(machine.watch())
            before = cpu.sample(groups)
            await asyncio.sleep(10)
            idle = {name: seconds - before[name] for name, seconds in cpu.sample(groups).items()}
            print(
                "    0 idle, cpu % of one core: "
                + ", ".join(f"{name} {10 * seconds:.1f}" for name, seconds in idle.items())
                + f"; server total {10 * sum(idle.values()):.1f}",
                flush=True,
            )
            for rate in rates:
                stats.errors.clear()
                stats.sent_at.clear()  # a step's ids carry its number: the last step's are never looked up again
                stats.seen.clear()
                gc.collect()
                gc.freeze()  # what the generator holds between steps is never scanned during one
                cpu_before, hops_before = cpu.sample(groups), await hops(session, ports, gateway_ports)
                generator_before = time.process_time()
                generator_stalls.take()
                result = await run_step(
                    conns, conversations, args.size, rate, args.seconds, stats, args.typing, args.chars
                )
                cpu_after, hops_after = cpu.sample(groups), await hops(session, ports, gateway_ports)
                generator = time.process_time() - generator_before
                # taken before the percentiles: sorting a step's latencies holds the loop (~0.1 s for 15 s at 3,000
                # msg/s), which was reported as the generator's lag during the step
                lag, gc_pause = generator_stalls.take()
                result["p50_ms"] = round(percentile(stats.latencies, 50), 1)
                result["p99_ms"] = round(percentile(stats.latencies, 99), 1)
                print(
                    f"{result['rate']:>5.0f} {result['send_rate']:>7} {result['delivered_per_s']:>12} "
                    f"{result['p50_ms']:>7} {result['p99_ms']:>7} {result['max_ms']:>7} {result['lost']:>5}  "
                    f"{result['errors'] or ''}"
                    + (f" typing frames received/s {result['typing_per_s']}" if args.typing else "")
                    + (
                        f" worst sent {result['worst_at_s']} s after the step began at {result['began']};"
                        f" seconds with a message over 300 ms: {result['slow_seconds']}"
                        + "; the machine in each (that second and the next): "
                        + "; ".join(
                            f"{second}: " + machine.during(result["started"] + second, result["started"] + second + 2)
                            for second in result["slow_seconds"]
                        )
                        if result["max_ms"] > 300
                        else ""
                    ),
                    flush=True,
                )
                # CPU over the whole step (the send window and the drain after it)
                wall = result["seconds"] + result["drain_seconds"]
                used = {name: cpu_after[name] - cpu_before[name] for name in groups}
                server = sum(used.values())
                print(
                    "      cpu % of one core: "
                    + ", ".join(
                        f"{name} {100 * used[name] / wall:.0f}" for name in sorted(used, key=used.get, reverse=True)
                    )
                    + f"; server total {100 * server / wall:.0f}, generator {100 * generator / wall:.0f}"
                    + f"; server CPU per message {1000 * server / max(result['sent'], 1):.2f} ms"
                    + f"; machine: {machine.during(result['started'], result['started'] + wall)}",
                    flush=True,
                )
                print(
                    "      "
                    + (
                        ""
                        if args.peer
                        else "mean ms: since the gateway accepted it, " + hop_report(hops_before, hops_after) + "; "
                    )
                    + f"generator's own longest loop lag {1000 * lag:.0f} ms, GC pause {1000 * gc_pause:.0f} ms",
                    flush=True,
                )
                if not args.peer:
                    print("      batching: " + batching_report(hops_before, hops_after, wall), flush=True)
                now = await work_done(session, ports)
                if ports:
                    print(
                        "      work split: "
                        + "; ".join(
                            f"{name}s " + " / ".join(f"{share:.0%}" for share in shares(work[name], now[name]))
                            for name in ports
                        ),
                        flush=True,
                    )
                work = now
                ok = result["p99_ms"] <= 200 and result["lost"] == 0 and not result["errors"]
                if ok:
                    best = result
                elif args.step and not args.keep_going:
                    break
                await asyncio.sleep(2)
            if args.step:
                print(f"highest rate with p99 <= 200 ms and nothing lost: {best['rate'] if best else 'none'} msg/s")
            for ws in conns:
                await ws.close()
            for task in readers:
                task.cancel()
            stall_watch.cancel()
            machine_watch.cancel()
        if args.keep_logs:
            keep = Path(args.keep_logs)
            keep.mkdir(parents=True, exist_ok=True)
            for log in state.rglob("*.log"):  # the services', and every server's (of each node)
                shutil.copy(log, keep / f"{log.parent.name}-{log.name}")
            print(f"logs kept in {keep}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--size", type=int, default=5, help="participants per conversation")
    parser.add_argument("--rate", type=float, default=500, help="messages per second, in total")
    parser.add_argument("--step", help="comma-separated rates to try in turn (step mode)")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument(
        "--chars", type=int, default=100, help="characters per message (issue 11's scenario: 100; until 2026-11-29: 40)"
    )
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--idle", type=int, default=0, help="idle sockets of other users held open meanwhile")
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--notifiers", type=int, default=1)
    parser.add_argument(
        "--partitions", type=int, default=DEFAULT_PARTITIONS, help="CHAT_PARTITIONS (the services' default)"
    )
    parser.add_argument(
        "--typing",
        action="store_true",
        help='each send is preceded by a "typing" frame for its conversation, half the interval between a '
        "user's sends before it (at most 1 s), as a client sends them; the gateway passes one per "
        "conversation per second per socket",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="clustered engines (three RabbitMQ nodes, a Postgres primary and synchronous standby, Redis with Sentinel)",
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="measure the peer instead (bench/peer: Django Channels' chat tutorial saving each message with the ORM)",
    )
    parser.add_argument(
        "--peer-conn-max-age",
        type=int,
        default=0,
        help="the peer's Django CONN_MAX_AGE: 0 (Django's default) opens a Postgres connection per message",
    )
    parser.add_argument("--keep-going", action="store_true", help="step mode: run every rate, even after one fails")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the services' and servers' logs here at the end")
    args = parser.parse_args()
    if args.peer and args.cluster:
        parser.error("--peer runs on one Postgres: drop --cluster")
    if args.peer:
        if importlib.util.find_spec("channels") is None or not (BIN / "daphne").exists():
            parser.error("--peer needs the peer extra: pip install -e '.[peer]'")
        if args.typing or (args.gateways, args.writers, args.notifiers) != (1, 1, 1):
            parser.error(
                "--peer is one daphne process without typing: drop --typing, --gateways, --writers, --notifiers"
            )
    install_uvloop()
    tune_gc()  # the generator's own collector would add its pauses to the latencies it measures
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
