"""Session fixtures: one private Postgres, Redis and RabbitMQ for the whole run; per test, a
database cloned from a migrated template, a vhost and a Redis db of its own."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from devtools.stack import Stack
from shared.migrate import migrate

from .harness import BIN, System

BASE_PORT = 27430  # below the ephemeral range (32768-60999): no client socket can hold these
_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    state = Path(tempfile.mkdtemp(prefix="chat-test-"))
    servers = Stack.at(state, BASE_PORT, fsync=False)
    try:
        servers.start()
        servers.postgres.ensure_database("template_chat")
        asyncio.run(migrate(servers.postgres.dsn("template_chat")))
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(state, ignore_errors=True)


def new_database(stack: Stack) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    stack.postgres.ensure_database(name, template="template_chat")
    return name


@pytest_asyncio.fixture(loop_scope="session")
async def system(stack: Stack, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[System]:
    vhost = f"t_{uuid.uuid4().hex[:12]}"
    stack.rabbitmq.add_vhost(vhost)
    redis_db = next(_redis_dbs)
    client = aioredis.Redis.from_url(stack.redis.url(redis_db))
    await client.flushdb()
    await client.aclose()
    sys_ = System(stack=stack, workdir=tmp_path, database=new_database(stack), vhost=vhost, redis_db=redis_db)
    try:
        yield sys_
        # every frame any test client received matches the AsyncAPI document
        assert not [v for c in sys_.clients for v in c.violations], [v for c in sys_.clients for v in c.violations][:5]
    finally:
        await sys_.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(sys_.logs())
        stack.rabbitmq.ctl("delete_vhost", vhost, check=False)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def run_command(name: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name)], env=env, capture_output=True, text=True, timeout=timeout)
