"""``chat-migrate``: apply the numbered SQL files in shared/migrations, once each.

Safe to run twice at the same moment: the whole run holds a transaction-scoped advisory lock,
so a second runner waits, then finds everything applied. Each file runs in that one
transaction with its row in ``schema_migrations``, so a failure leaves nothing half-applied.
"""

from __future__ import annotations

import asyncio
import sys
import time
from importlib import resources

import asyncpg

from .db import session_target
from .log import get_logger
from .service import settings_or_exit
from .settings import load_migrate

LOCK_KEY = 0x63686174  # "chat"


def migrations() -> list[tuple[int, str, str]]:
    files = sorted(
        (f for f in resources.files("shared.migrations").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    return [(int(f.name.split("_", 1)[0]), f.name, f.read_text()) for f in files]


async def migrate(dsn: str) -> list[str]:
    """Apply what is missing; return the names applied by this call."""
    conn = await asyncpg.connect(dsn, timeout=10, target_session_attrs=session_target(dsn))  # the primary
    applied: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
                applied.append(name)
    finally:
        await conn.close()
    return applied


def main() -> None:
    settings = settings_or_exit("chat-migrate", load_migrate)
    log = get_logger("chat-migrate")
    started = time.perf_counter()
    try:
        applied = asyncio.run(migrate(settings.database_url))
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        print(f"chat-migrate: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("schema_migrated", applied=applied, ms=round((time.perf_counter() - started) * 1000, 1))
