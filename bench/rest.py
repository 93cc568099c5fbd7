"""Latency and throughput of the REST reads on a seeded database of a million messages.

It starts its own private Postgres, Redis and RabbitMQ (ports 26431-26435) and ``--instances``
query services, seeds ``--conversations`` conversations with ``--messages`` messages in all,
the user ``me`` being in ``--mine`` of them, then runs ``--clients`` concurrent clients for
``--seconds`` per endpoint and prints p50/p99 latency and requests/s. It also prints the
EXPLAIN ANALYZE of the conversation-list query.

Messages are 4 to 14 words drawn like chat text: mostly common English words, some Korean words
with particles attached, some Chinese and Japanese words, and a few rare tokens. ``--cases
search`` runs ``GET /search`` for kinds of terms (common, rare, Korean inside a longer word, one
Chinese character, two words, none found, a short rare Latin term, and a mix of all) at each of
``--search-clients`` and prints the plan of each.

``--cases poll`` runs what every open PageNow extension and chat page ask most: the badge poll
(``GET /conversations?isRead=false`` of a user in 50 conversations, 6 unread), a list page and a
50-message history page, at each of ``--rates`` (0: as fast as answered; otherwise wrk waits
between requests to offer about that many a second). ``--auth rs256`` signs the tokens with an
RSA key the query service fetches from a JWKS served by the benchmark, as from an identity
provider. ``--load wrk`` (Debian's ``wrk``) costs the two cores far less than the Python client.

    python -m bench.rest --messages 1000000 --conversations 10000 --mine 1000 --clients 50 --seconds 20
    python -m bench.rest --cases search --search-clients 1,20 --seconds 10
    python -m bench.rest --cases poll --rates 0,2000 --clients 50 --seconds 15 --load wrk --auth rs256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import asyncpg
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.stack import private_system, spawn_service, wait_ready
from query import paging, store
from shared.auth import mint
from shared.service import install_uvloop

SECRET = "bench-secret-bench-secret-bench-secret-0123"
JWKS_PORT = 26650
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
               c.rn || '-' || s,
               (SELECT string_agg(CASE WHEN r < 0.70 THEN ($2::text[])[1 + floor(random() * array_length($2::text[], 1))::int]
                                       WHEN r < 0.85 THEN ($3::text[])[1 + floor(random() * array_length($3::text[], 1))::int]
                                                          || ($4::text[])[1 + floor(random() * array_length($4::text[], 1))::int]
                                       WHEN r < 0.95 THEN ($5::text[])[1 + floor(random() * array_length($5::text[], 1))::int]
                                       ELSE 'zyx' || floor(random() * 2000)::int END, ' ')
                FROM (SELECT random() AS r FROM generate_series(1, 4 + (s * 7 + c.rn) % 11)) w),
               now() - make_interval(secs => ($1::int - s) * 60 + c.rn), s
        FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM conversations) c, generate_series(1, $1::int) s""",
        ("per_conversation", "english", "korean", "particles", "cjk"),
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
    (  # PageNow's badge poll: a user in 50 conversations, 6 of them unread
        """INSERT INTO participants (conversation_id, user_id, last_read_seq, last_sent_at)
        SELECT id, 'badge', CASE WHEN rn <= 6 THEN last_seq - 3 ELSE last_seq END, last_sent_at
        FROM (SELECT id, last_seq, last_sent_at, row_number() OVER (ORDER BY id DESC) AS rn FROM conversations) c
        WHERE rn <= 50""",
        (),
    ),
    ("ANALYZE", ()),
]


ENGLISH = (
    "hello thanks meeting tomorrow lunch project deadline coffee weekend report review update call later today "
    "please sure great idea budget client launch design office train ticket movie dinner family birthday party "
    "music game code deploy server bug release sprint invoice payment holiday flight hotel beach mountain"
).split()
KOREAN = "친구 회의 내일 점심 프로젝트 마감 커피 주말 보고서 감사합니다 안녕하세요 학교 사랑 시간".split()
PARTICLES = ["", "가", "는", "를", "에서", "와", "도", "의"]
CJK = "東京 会議 明日 ランチ ありがとう 大阪 京都 北京 上海 朋友 你好".split()

# What people search for, by kind; "mix" draws a kind, then a term of it, for each request.
SEARCHES = {
    "common word (coffee)": ["coffee"],
    "two common words": ["coffee deadline"],
    "inside a word (eadlin)": ["eadlin"],
    "rare token (zyx1234 and others)": [f"zyx{n}" for n in range(1000, 1100)],
    "Korean inside words (보고서, 친구)": ["보고서", "친구", "감사"],
    "one Chinese character (京)": ["京"],
    "Japanese (ランチ)": ["ランチ"],
    "none found (nothingatall)": ["nothingatall"],
    "two rare Latin letters (zq)": ["zq"],
}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


async def seed(dsn: str, conversations: int, mine: int, per_conversation: int) -> list[str]:
    conn = await asyncpg.connect(dsn, command_timeout=3600)
    try:
        values = {
            "conversations": conversations,
            "mine": mine,
            "per_conversation": per_conversation,
            "english": ENGLISH,
            "korean": KOREAN,
            "particles": PARTICLES,
            "cjk": CJK,
        }
        # the trigram index is built once the rows are in, as the migration would on a full table
        search_index = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'messages_search_idx'")
        await conn.execute("DROP INDEX messages_search_idx")
        for statement, names in SEED:
            await conn.execute(statement, *(values[n] for n in names))
        await conn.execute(search_index)
        rows = await conn.fetch("SELECT conversation_id FROM participants WHERE user_id = 'me'")
        for limit in (None, 20):
            plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + store.LIST, "me", None, None, None, limit)
            print(f"# EXPLAIN ANALYZE of the conversation list (limit {limit}) for a user in {len(rows)} conversations")
            for line in plan:
                print("   ", line[0])
        return [str(r["conversation_id"]) for r in rows]
    finally:
        await conn.close()


async def explain_searches(dsn: str) -> None:
    """The plan of each kind of search, run as the service runs it (a custom plan for the words)."""
    conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_custom_plan", "jit": "off"})
    try:
        for name, terms in SEARCHES.items():
            page = paging.search({"q": terms[0], "limit": str(paging.DEFAULT_SEARCH)})
            args = ("me", None, None, None, None, page.limit + 1, list(page.checked), *page.words)
            plan = await conn.fetch(
                "EXPLAIN (ANALYZE, BUFFERS) " + store.search_sql(len(page.words), bool(page.checked)), *args
            )
            print(f"# EXPLAIN ANALYZE of GET /search?q={terms[0]} ({name})")
            for line in plan:
                print("   ", line[0])
    finally:
        await conn.close()


async def hammer(
    session: aiohttp.ClientSession, urls: list[str], make_path, clients: int, seconds: float, token: str
) -> dict:
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


WRK_SCRIPT = """
local paths = {%s}
local headers = {["Authorization"] = "%s"}
request = function() return wrk.format("GET", paths[math.random(#paths)], headers) end
%s
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%.3f %%.3f\\n", summary.requests, summary.duration,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


async def hammer_wrk(
    state: Path, urls: list[str], make_path, clients: int, seconds: float, token: str, rate: float = 0
) -> dict:
    """The same closed loop from ``wrk`` (one thread per query instance): a client that costs little
    CPU, so the two cores go to the query service and Postgres. Paths are drawn from 2,000 of
    ``make_path``'s. With ``rate``, each connection waits ``clients / rate`` between requests, so
    about ``rate`` requests a second are offered while answers are fast (wrk's ``delay``: a slow
    answer still delays the next request, so it is not a true open loop)."""
    paths = ", ".join('"' + make_path().replace("\\", "\\\\").replace('"', '\\"') + '"' for _ in range(2000))
    script = state / "wrk.lua"
    pacing = f"delay = function() return {1000 * clients / rate:.3f} end" if rate else ""
    script.write_text(WRK_SCRIPT % (paths, token, pacing))
    runs = [
        await asyncio.create_subprocess_exec(
            "wrk",
            "-t1",
            f"-c{max(1, clients // len(urls))}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            str(script),
            url,
            stdout=asyncio.subprocess.PIPE,
        )
        for url in urls
    ]
    outputs = [(await run.communicate())[0].decode() for run in runs]
    results = [line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("RESULT ")]
    if len(results) != len(urls):
        raise RuntimeError(f"wrk did not finish: {outputs}")
    requests = sum(int(r[0]) for r in results)
    return {
        "requests": requests,
        "rps": round(sum(int(r[0]) / (int(r[1]) / 1e6) for r in results), 1),
        "errors": sum(int(r[2]) for r in results),
        "p50_ms": max(float(r[3]) for r in results),
        "p99_ms": max(float(r[4]) for r in results),
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
        signer = Signer(args.auth)
        await signer.start()
        env = {
            **os.environ,
            **signer.env(),
            "CHAT_DATABASE_URL": dsn,
            "CHAT_AMQP_URL": stack.rabbitmq.url(),
            "CHAT_HOST": "127.0.0.1",
            "CHAT_LOG_LEVEL": "warning",
            # every request is the one user's: the per-user REST limit would answer most of them 429
            "CHAT_RATE_REST_READ": "100000:100000",
            "CHAT_RATE_REST_SEARCH": "100000:100000",
        }
        urls = []
        for i in range(args.instances):
            port = 26601 + i
            procs.append(spawn_service("query", {**env, "CHAT_PORT": str(port)}, state / f"query-{port}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs):
            await wait_ready(url, proc=proc)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            reads = {
                "GET /conversations (1,000 conversations)": lambda: "/conversations",
                "GET /conversations?limit=20": lambda: "/conversations?limit=20",
                "GET /conversations/{id}/messages?limit=50&offset=0": lambda: (
                    f"/conversations/{random.choice(mine)}/messages?limit=50&offset=0"
                ),
                "GET /conversations/{id}/messages?limit=50&beforeSeq=N": lambda: (
                    f"/conversations/{random.choice(mine)}/messages?limit=50&beforeSeq={random.randint(51, 100)}"
                ),
            }
            polls = {
                "GET /conversations?isRead=false (badge poll: 50, 6 unread)": lambda: "/conversations?isRead=false",
                "GET /conversations?limit=20": reads["GET /conversations?limit=20"],
                "GET /conversations/{id}/messages?limit=50&offset=0": reads[
                    "GET /conversations/{id}/messages?limit=50&offset=0"
                ],
            }
            runs: list[tuple[str, object, int, str, float]] = []
            if args.cases in ("all", "reads"):
                runs += [(name, path, args.clients, "me", 0.0) for name, path in reads.items()]
            if args.cases == "poll":
                for rate in (float(r) for r in args.rates.split(",")):
                    for name, path in polls.items():
                        runs.append((name, path, args.clients, "badge" if "badge" in name else "me", rate))
            if args.cases in ("all", "search"):
                await explain_searches(dsn)
                kinds = {name: [terms] for name, terms in SEARCHES.items()}
                kinds["mix of the above"] = list(SEARCHES.values())
                for clients in (int(n) for n in args.search_clients.split(",")):
                    runs += [(f"search: {name}", _searcher(terms), clients, "me", 0.0) for name, terms in kinds.items()]
            print(
                f"# {args.instances} query instance(s), {args.seconds}s per endpoint, load from {args.load}, "
                f"{args.auth} tokens; {os.cpu_count()} cores"
            )
            print(
                f"{'endpoint':58} {'clients':>7} {'offered':>8} {'req/s':>8} {'p50_ms':>8} {'p99_ms':>8} {'errors':>6}"
            )
            for name, path, clients, user, rate in runs:
                token = signer.token(user)
                if args.load == "wrk":
                    await hammer_wrk(state, urls, path, clients, 2, token, rate)  # warm-up
                    result = await hammer_wrk(state, urls, path, clients, args.seconds, token, rate)
                else:
                    await hammer(session, urls, path, clients, 2, token)  # warm-up
                    result = await hammer(session, urls, path, clients, args.seconds, token)
                offered = f"{rate:.0f}" if rate else "max"
                print(
                    f"{name:58} {clients:>7} {offered:>8} {result['rps']:>8} {result['p50_ms']:>8} "
                    f"{result['p99_ms']:>8} {result['errors']:>6}",
                    flush=True,
                )
            if args.hold:
                print(f"# holding: query at {' '.join(urls)}, Postgres at {dsn}; Ctrl-C to stop", flush=True)
                await asyncio.Event().wait()
        await signer.close()


class Signer:
    """Tokens for the benchmark's users: HS256 with the shared secret, or RS256 with a key the
    query service fetches from a JWKS served here (port 26650), as from an identity provider."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rs256" else None
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self.key is None:
            return
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwks = {"keys": [{**jwk, "kid": "bench", "alg": "RS256", "use": "sig"}]}
        app = web.Application()
        app.router.add_get("/jwks.json", lambda request: web.json_response(jwks))
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", JWKS_PORT).start()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def env(self) -> dict[str, str]:
        if self.key is None:
            return {"CHAT_JWT_SECRET": SECRET}
        return {"CHAT_JWT_JWKS_URL": f"http://127.0.0.1:{JWKS_PORT}/jwks.json", "CHAT_JWT_ALGORITHMS": "RS256"}

    def token(self, user: str) -> str:
        if self.key is None:
            return mint(SECRET, user)
        now = int(time.time())
        claims = {"cognito:username": user, "iat": now, "exp": now + 24 * 3600}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "bench"})


def _searcher(kinds: list[list[str]]):
    return lambda: "/search?" + urlencode({"q": random.choice(random.choice(kinds))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--mine", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--cases", choices=("all", "reads", "search", "poll"), default="all")
    parser.add_argument("--auth", choices=("hs256", "rs256"), default="hs256", help="rs256: keys from a local JWKS")
    parser.add_argument(
        "--rates", default="0", help="poll: comma-separated request rates to offer (0: as fast as answered)"
    )
    parser.add_argument("--load", choices=("python", "wrk"), default="python", help="the client: aiohttp here, or wrk")
    parser.add_argument("--hold", action="store_true", help="keep the servers up afterwards, until Ctrl-C")
    parser.add_argument("--search-clients", default="1,20", help="comma-separated client counts for the searches")
    args = parser.parse_args()
    install_uvloop()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
