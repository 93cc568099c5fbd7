"""The foundation: schema migrations, start-up checks, readiness, and a dev token on the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import aiohttp
import asyncpg
import pytest

from shared.migrate import migrate, migrations

from ..conftest import new_database, run_command
from ..harness import BIN, SECRET, free_port, wait_ready

ALL_MIGRATIONS = [name for _, name, _ in migrations()]
EXPECTED_TABLES = {"conversations", "participants", "messages", "schema_migrations"}


async def schema_of(dsn: str) -> tuple[set[str], list[tuple[int, str]]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        versions = [(r["version"], r["name"]) for r in await conn.fetch("SELECT version, name FROM schema_migrations")]
        return tables, versions
    finally:
        await conn.close()


def fresh_db(stack) -> str:
    name = f"m_{os.urandom(6).hex()}"
    stack.postgres.ensure_database(name)
    return stack.postgres.dsn(name)


async def test_chat_migrate_twice_in_sequence(stack):
    dsn = fresh_db(stack)
    env = {**os.environ, "CHAT_DATABASE_URL": dsn}
    first = run_command("chat-migrate", env)
    second = run_command("chat-migrate", env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert f'"applied": {json.dumps(ALL_MIGRATIONS)}' in first.stdout
    assert '"applied": []' in second.stdout
    tables, versions = await schema_of(dsn)
    assert EXPECTED_TABLES <= tables
    assert versions == list(enumerate(ALL_MIGRATIONS, start=1))


async def test_chat_migrate_at_the_same_moment(stack):
    dsn = fresh_db(stack)
    env = {**os.environ, "CHAT_DATABASE_URL": dsn}
    procs = [
        subprocess.Popen(
            [str(BIN / "chat-migrate")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert sum(f'"applied": {json.dumps(ALL_MIGRATIONS)}' in out for out, _ in outputs) == 1
    tables, versions = await schema_of(dsn)
    assert EXPECTED_TABLES <= tables and versions == list(enumerate(ALL_MIGRATIONS, start=1))
    # and in-process, concurrently, too
    results = await asyncio.gather(migrate(dsn), migrate(dsn))
    assert results == [[], []]


async def test_schema_enforces_the_contract(stack):
    dsn = stack.postgres.dsn(new_database(stack))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO conversations (id, is_group, created_by, direct_key) "
            "VALUES (gen_random_uuid(), false, 'a', 'a\x1fb')"
        )
        with pytest.raises(asyncpg.UniqueViolationError):  # one direct conversation per pair
            await conn.execute(
                "INSERT INTO conversations (id, is_group, created_by, direct_key) "
                "VALUES (gen_random_uuid(), false, 'b', 'a\x1fb')"
            )
        cid = await conn.fetchval("SELECT id FROM conversations")
        await conn.execute(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content, sent_at)"
            " VALUES ($1, 1, gen_random_uuid(), 'a', 't1', 'hi', now())",
            cid,
        )
        with pytest.raises(asyncpg.UniqueViolationError):  # tempMessageId unique per sender
            await conn.execute(
                "INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content,"
                " sent_at) VALUES ($1, 2, gen_random_uuid(), 'a', 't1', 'hi', now())",
                cid,
            )
        with pytest.raises(asyncpg.UniqueViolationError):  # one row per seq
            await conn.execute(
                "INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content,"
                " sent_at) VALUES ($1, 1, gen_random_uuid(), 'b', 't1', 'hi', now())",
                cid,
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content,"
                " sent_at) VALUES ($1, 2, gen_random_uuid(), 'a', 't2', '', now())",
                cid,
            )
    finally:
        await conn.close()


GOOD = {
    "CHAT_DATABASE_URL": "postgresql://chat@127.0.0.1:1/chat",
    "CHAT_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
    "CHAT_REDIS_URL": "redis://127.0.0.1:1/0",
    "CHAT_JWT_SECRET": SECRET,
}
NEEDS = {
    "chat-gateway": ["CHAT_AMQP_URL", "CHAT_REDIS_URL", "CHAT_JWT_SECRET"],
    "chat-writer": ["CHAT_DATABASE_URL", "CHAT_AMQP_URL", "CHAT_REDIS_URL"],
    "chat-notifier": ["CHAT_AMQP_URL", "CHAT_REDIS_URL"],
    "chat-query": ["CHAT_DATABASE_URL", "CHAT_AMQP_URL", "CHAT_JWT_SECRET"],
    "chat-migrate": ["CHAT_DATABASE_URL"],
}


def clean_env(**overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(GOOD)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.mark.parametrize(("command", "variable"), [(c, v) for c, vs in NEEDS.items() for v in vs])
def test_service_refuses_to_start_without_a_setting(command, variable):
    result = run_command(command, clean_env(**{variable: None}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: {variable}"), result.stderr


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("chat-writer", "CHAT_DATABASE_URL", "mysql://localhost/chat"),
        ("chat-gateway", "CHAT_AMQP_URL", "localhost:5672"),
        ("chat-notifier", "CHAT_REDIS_URL", "http://localhost"),
        ("chat-query", "CHAT_PORT", "http"),
        ("chat-gateway", "CHAT_JWT_SECRET", "short"),
        ("chat-gateway", "CHAT_LOG_LEVEL", "verbose"),
        ("chat-writer", "CHAT_PARTITIONS", "-1"),
    ],
)
def test_service_refuses_to_start_with_a_malformed_setting(command, variable, value):
    result = run_command(command, clean_env(**{variable: value}))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"{command}: {variable}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "down"),
    [
        ("writer", "database"),
        ("writer", "broker"),
        ("notifier", "redis"),
        ("notifier", "broker"),
        ("gateway", "redis"),
        ("gateway", "broker"),
        ("query", "database"),
    ],
)
async def test_readyz_is_not_ready_while_a_dependency_is_down(stack, name, down):
    """Each dependency in turn points at a port where nothing listens; the service stays up, unready."""
    port = free_port()
    env = clean_env(
        CHAT_DATABASE_URL=stack.postgres.dsn(new_database(stack)),
        CHAT_AMQP_URL=stack.rabbitmq.url(),
        CHAT_REDIS_URL=stack.redis.url(15),
        CHAT_PORT=str(port),
        CHAT_HOST="127.0.0.1",
    )
    dead = f"127.0.0.1:{free_port()}"
    if down == "database":
        env["CHAT_DATABASE_URL"] = f"postgresql://chat@{dead}/chat"
    elif down == "broker":
        env["CHAT_AMQP_URL"] = f"amqp://guest:guest@{dead}/"
    else:
        env["CHAT_REDIS_URL"] = f"redis://{dead}/0"
    proc = subprocess.Popen([str(BIN / f"chat-{name}")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", path="/healthz", proc=proc)
        async with aiohttp.ClientSession() as session:
            deadline = asyncio.get_running_loop().time() + 30  # the others come up (declaring queues takes a while)
            while True:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    body = await resp.json()
                    assert resp.status == 503
                    assert body["ready"] is False and body["checks"][down] is False
                if all(ok for check, ok in body["checks"].items() if check != down):
                    break
                assert asyncio.get_running_loop().time() < deadline, body
                await asyncio.sleep(0.5)
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200 and "text/plain" in resp.headers["Content-Type"]
                assert "chat_" in await resp.text()
    finally:
        proc.terminate()
        proc.wait(20)


async def test_query_stays_ready_while_the_broker_is_down(stack):
    """REST is how clients catch up: losing the broker must not take every query pod out of service."""
    port = free_port()
    env = clean_env(
        CHAT_DATABASE_URL=stack.postgres.dsn(new_database(stack)),
        CHAT_AMQP_URL=f"amqp://g:g@127.0.0.1:{free_port()}/",
        CHAT_PORT=str(port),
        CHAT_HOST="127.0.0.1",
    )
    proc = subprocess.Popen([str(BIN / "chat-query")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc=proc)  # /readyz answers 200
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["checks"] == {"database": True}
    finally:
        proc.terminate()
        proc.wait(20)


async def test_dev_token_opens_a_websocket(system):
    await system.start_all()
    token = subprocess.run(
        [str(BIN / "python"), "-m", "devtools.tokens", "alice"],
        env={**os.environ, "CHAT_JWT_SECRET": SECRET},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    client = await system.connect("alice", token_value=token)
    await client.send({"action": "heartbeat"})
    await client.send("{")
    frame = await client.wait_frame(type="error")
    assert frame["code"] == "invalid_frame"
    async with aiohttp.ClientSession() as session:
        for bad in ("", "?Authorization=garbage"):
            async with session.get(f"{system.of('gateway')[0].url}/{bad}") as resp:
                assert resp.status == 401
                assert (await resp.json())["error"] == "unauthorized"
    await client.close()
    await asyncio.sleep(0.5)
    log = system.of("gateway")[0].output()
    assert '"event": "ws_closed"' in log and '"http_request"' in log
    assert token not in log and "garbage" not in log  # tokens never reach the logs


async def test_rows_every_message_rewrites_are_vacuumed_within_seconds(stack):
    """Each message rewrites its conversation's participant rows (never HOT: their copy of
    last_sent_at is indexed). Left to autovacuum's defaults, the dead versions pile up for a
    minute and every commit slows down; with migration 0005 and the 5 s naptime we ship, the
    table is vacuumed within seconds of the rewrites."""
    conn = await asyncpg.connect(stack.postgres.dsn(new_database(stack)))
    try:
        cid = await conn.fetchval(
            "INSERT INTO conversations (id, title, is_group, created_by) VALUES (gen_random_uuid(), 't', true, 'u0')"
            " RETURNING id"
        )
        await conn.executemany(
            "INSERT INTO participants (conversation_id, user_id) VALUES ($1, $2)", [(cid, f"u{i}") for i in range(5)]
        )
        for _ in range(400):  # 2,000 dead versions of 5 rows, as 400 messages would leave
            await conn.execute(
                "UPDATE participants SET last_sent_at = clock_timestamp() WHERE conversation_id = $1", cid
            )
        visits = "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'participants'"
        async with asyncio.timeout(20):
            while not await conn.fetchval(visits):
                await asyncio.sleep(0.5)
    finally:
        await conn.close()
