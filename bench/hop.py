"""The floor under a message's latency: what one hop costs on this machine, with nothing of ours.

A message crosses, in order: the commands' quorum queue (gateway to writer), two Postgres
round trips (the writer's read, then its write and commit), the events' quorum queue (writer
to notifier), a Redis round trip (the registry) and a transient queue (notifier to gateway).
This times each of those alone, from one Python client on uvloop, the servers configured as
``make run`` configures them (devtools/stack.py), and prints their sum: no design with these
hops can deliver faster. Each is timed twice: back to back ("busy") and with 10 ms of idle
before each try ("idle"), which is what every hop sees at 100 msg/s. On a virtual machine an
idle CPU halts and its wake-up is paid by every hop; that difference is the point.

    python -m bench.hop --tries 300
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import asyncpg
import redis.asyncio as aioredis

from devtools.stack import private_system
from shared.service import install_uvloop

Probe = Callable[[], Awaitable[None]]


async def timed(probe: Probe, tries: int, idle: float) -> float:
    """Median ms of ``probe`` over ``tries``, each after ``idle`` seconds of nothing."""
    samples = []
    for _ in range(tries):
        if idle:
            await asyncio.sleep(idle)
        started = time.perf_counter()
        await probe()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def queue_hop(connection: aio_pika.abc.AbstractConnection, arguments: dict, persistent: bool) -> Probe:
    """Publish one message and wait until a consumer on another channel has it (and the confirm)."""
    publisher = await connection.channel(publisher_confirms=True)
    consumer = await connection.channel()
    await consumer.set_qos(prefetch_count=64)
    queue = await consumer.declare_queue(f"hop.{uuid.uuid4().hex[:8]}", durable=True, arguments=arguments)
    arrived: asyncio.Queue[None] = asyncio.Queue()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        arrived.put_nowait(None)

    await queue.consume(on_message)
    mode = aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT

    async def probe() -> None:
        confirm = asyncio.ensure_future(
            publisher.default_exchange.publish(aio_pika.Message(b"x" * 300, delivery_mode=mode), queue.name)
        )
        await arrived.get()
        await confirm

    return probe


async def main_async(tries: int) -> None:
    async with private_system("chat-hop-", 24430, fsync=True) as (stack, _state, _procs):
        db = await asyncpg.connect(stack.postgres.dsn())
        await db.execute("CREATE TABLE IF NOT EXISTS hop (id bigserial PRIMARY KEY, body text)")
        insert = await db.prepare("INSERT INTO hop (body) VALUES ($1)")
        select = await db.prepare("SELECT 1")
        redis = aioredis.Redis.from_url(stack.redis.url())
        amqp = await aio_pika.connect(stack.rabbitmq.url())
        quorum = {"x-queue-type": "quorum", "x-single-active-consumer": True, "x-delivery-limit": 20}
        hops: list[tuple[str, Probe]] = [
            ("quorum queue, persistent (commands)", await queue_hop(amqp, quorum, True)),
            ("Postgres read (a prepared SELECT)", lambda: select.fetchval()),
            ("Postgres write, committed (fsync)", lambda: insert.fetch("x" * 100)),
            ("quorum queue, persistent (events)", await queue_hop(amqp, quorum, True)),
            ("Redis round trip", lambda: redis.ping()),
            ("classic queue, transient (deliveries)", await queue_hop(amqp, {}, False)),
        ]
        print(
            f"# {tries} tries each, median ms; {platform.node()} {platform.machine()}, Python {platform.python_version()}"
        )
        print(f"{'hop':<42} {'busy':>7} {'idle':>7}")
        totals = [0.0, 0.0]
        for name, probe in hops:
            busy = await timed(probe, tries, 0)
            idle = await timed(probe, tries, 0.01)
            totals[0] += busy
            totals[1] += idle
            print(f"{name:<42} {busy:>7.2f} {idle:>7.2f}", flush=True)
        print(f"{'sum: the floor of one message':<42} {totals[0]:>7.2f} {totals[1]:>7.2f}")
        await amqp.close()
        await redis.aclose()
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=300)
    args = parser.parse_args()
    install_uvloop()
    asyncio.run(main_async(args.tries))


if __name__ == "__main__":
    main()
