"""Latency and throughput of the REST reads on a seeded database of a million messages.

It starts its own private Postgres, Redis and RabbitMQ (ports 26431-26435) and ``--instances``
query services, seeds ``--conversations`` conversations with ``--messages`` messages in all,
the user ``me`` being in ``--mine`` of them, then runs ``--clients`` concurrent clients for
``--seconds`` per endpoint and prints p50/p99 latency and requests/s. It also prints the
EXPLAIN ANALYZE of the conversation-list query.

    python -m bench.rest --messages 1000000 --conversations 10000 --mine 1000 --clients 50 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg

from devtools.stack import private_system, spawn_service, wait_ready
from query import store
from shared.auth import mint
from shared.service import install_uvloop

SECRET = "bench-secret-bench-secret-bench-secret-0123"
BIN = Path(sys.executable).parent

# (statement, the arguments it takes): conversations, mine, per_conversation
SEED = [
    (
        """INSERT INTO conversations (id, title, is_group, created_by, direct_key)
        SELECT gen_random_uuid(), NULL, false, 'me', 'c' || g FROM generate_series(1, $1::int) g""",
        ("conversations",),
    ),
    (
        """INSERT INTO participants (conversation_id, user_id)
        SELECT id, CASE WHEN rn <= $1::int THEN 'me' ELSE 'user' || rn END
        FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM conversations) c""",
        ("mine",),
    ),
    (
        """INSERT INTO participants (conversation_id, user_id)
        SELECT id, 'peer' || rn FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM conversations) c""",
        (),
    ),
    (
        """INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content, sent_at, change)
        SELECT c.id, s, gen_random_uuid(), CASE WHEN s % 2 = 0 THEN 'peer' || c.rn ELSE 'x' || c.rn END,
               c.rn || '-' || s, 'message number ' || s, now() - make_interval(secs => ($1::int - s) * 60 + c.rn), s
        FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM conversations) c, generate_series(1, $1::int) s""",
        ("per_conversation",),
    ),
    (
        """UPDATE conversations c SET last_seq = m.seq, last_change = m.seq, last_message_id = m.id, last_sent_at = m.sent_at,
               last_sender_id = m.sender_id, last_content = m.content
        FROM messages m WHERE m.conversation_id = c.id AND m.seq = $1::int""",
        ("per_conversation",),
    ),
    (
        """UPDATE participants p SET last_sent_at = c.last_sent_at FROM conversations c
        WHERE c.id = p.conversation_id""",
        (),
    ),
    (
        """UPDATE participants p SET last_read_seq = abs(hashtext(p.conversation_id::text)) % $1::int
        WHERE p.user_id = 'me'""",
        ("per_conversation",),
    ),
    ("ANALYZE", ()),
]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


async def seed(dsn: str, conversations: int, mine: int, per_conversation: int) -> list[str]:
    conn = await asyncpg.connect(dsn, command_timeout=3600)
    try:
        values = {"conversations": conversations, "mine": mine, "per_conversation": per_conversation}
        for statement, names in SEED:
            await conn.execute(statement, *(values[n] for n in names))
        rows = await conn.fetch("SELECT conversation_id FROM participants WHERE user_id = 'me'")
        for limit in (None, 20):
            plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + store.LIST, "me", None, None, None, limit)
            print(f"# EXPLAIN ANALYZE of the conversation list (limit {limit}) for a user in {len(rows)} conversations")
            for line in plan:
                print("   ", line[0])
        return [str(r["conversation_id"]) for r in rows]
    finally:
        await conn.close()


async def hammer(session: aiohttp.ClientSession, urls: list[str], make_path, clients: int, seconds: float) -> dict:
    token = mint(SECRET, "me")
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        base = urls[i % len(urls)]
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.get(base + make_path(), headers={"Authorization": token}) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "errors": errors,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }


async def main_async(args: argparse.Namespace) -> None:
    async with private_system("chat-qbench-", 26430, fsync=True) as (stack, state, procs):
        dsn = stack.postgres.dsn()
        started = time.perf_counter()
        mine = await seed(dsn, args.conversations, args.mine, args.messages // args.conversations)
        print(
            f"# seeded {args.messages} messages in {args.conversations} conversations "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        env = {
            **os.environ,
            "CHAT_DATABASE_URL": dsn,
            "CHAT_AMQP_URL": stack.rabbitmq.url(),
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_HOST": "127.0.0.1",
            "CHAT_LOG_LEVEL": "warning",
            # every request is the one user's: the per-user REST limit would answer most of them 429
            "CHAT_RATE_REST_READ": "100000:100000",
        }
        urls = []
        for i in range(args.instances):
            port = 26601 + i
            procs.append(spawn_service("query", {**env, "CHAT_PORT": str(port)}, state / f"query-{port}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs):
            await wait_ready(url, proc=proc)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            cases = {
                "GET /conversations (1,000 conversations)": lambda: "/conversations",
                "GET /conversations?limit=20": lambda: "/conversations?limit=20",
                "GET /conversations/{id}/messages?limit=50&offset=0": lambda: (
                    f"/conversations/{random.choice(mine)}/messages?limit=50&offset=0"
                ),
                "GET /conversations/{id}/messages?limit=50&beforeSeq=N": lambda: (
                    f"/conversations/{random.choice(mine)}/messages?limit=50&beforeSeq={random.randint(51, 100)}"
                ),
            }
            print(
                f"# {args.clients} clients, {args.instances} query instance(s), {args.seconds}s per endpoint; "
                f"{os.cpu_count()} cores"
            )
            print(f"{'endpoint':58} {'req/s':>8} {'p50_ms':>8} {'p99_ms':>8} {'errors':>6}")
            for name, path in cases.items():
                await hammer(session, urls, path, args.clients, 2)  # warm-up
                result = await hammer(session, urls, path, args.clients, args.seconds)
                print(
                    f"{name:58} {result['rps']:>8} {result['p50_ms']:>8} {result['p99_ms']:>8} {result['errors']:>6}",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--mine", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--instances", type=int, default=1)
    args = parser.parse_args()
    install_uvloop()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
