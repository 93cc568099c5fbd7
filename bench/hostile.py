"""The gateway's memory per connection before and after 10,000 hostile frames.

Starts its own private servers (ports 25431-25435) and one writer, notifier and gateway, opens
``--connections`` sockets (10 per user, the default cap), reads the gateway's resident memory,
then sends ``--frames`` hostile frames spread over the sockets: typing for fresh conversation
ids, reads of unknown conversations, U+0000 content, deep nesting, unknown actions, broken JSON.
Each socket stays within its strike budget, so none is closed and what is measured is what the
frames leave behind. Then one socket floods alone until it is closed with 1008.

    python -m bench.hostile --connections 500 --frames 10000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import uuid
from pathlib import Path

import aiohttp

from devtools.stack import private_system, service_env, spawn_service, wait_ready
from shared.auth import mint

SECRET = "bench-secret-bench-secret-bench-secret-0123"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def hostile(i: int) -> str:
    kind = i % 6
    cid = str(uuid.uuid4())
    if kind == 0:
        return json.dumps({"action": "typing", "conversationId": cid})
    if kind == 1:
        return json.dumps({"action": "read-messages", "conversationId": cid})
    if kind == 2:
        return json.dumps(
            {
                "action": "send-message",
                "tempMessageId": f"h{i}",
                "conversationId": cid,
                "content": "nul \u0000 " + "x" * 200,
            }
        )
    if kind == 3:
        return '{"action":"heartbeat","x":' + "[" * 20000 + "]" * 20000 + "}"
    if kind == 4:
        return json.dumps({"action": "x" * 100, "payload": "y" * 2000})
    return '{"action": "send-message", "content": "' + "z" * 3000


async def main_async(args: argparse.Namespace) -> None:
    async with private_system("chat-hostile-", 25430, fsync=False) as (stack, state, procs):
        env = {
            **os.environ,
            **service_env(stack, SECRET),
            "CHAT_HOST": "127.0.0.1",
            "CHAT_LOG_LEVEL": "warning",
            "CHAT_PARTITIONS": "4",
        }
        for name, port in (("writer", 25501), ("notifier", 25502), ("gateway", 25503)):
            procs.append(spawn_service(name, {**env, "CHAT_PORT": str(port)}, state / f"{name}.log"))
        for port, proc in zip((25501, 25502, 25503), procs):
            await wait_ready(f"http://127.0.0.1:{port}", proc=proc)
        gateway = procs[2]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            base = rss_kib(gateway.pid)
            sockets = []
            for i in range(args.connections):
                user = f"u{i // 10}"
                sockets.append(await session.ws_connect(f"http://127.0.0.1:25503/?Authorization={mint(SECRET, user)}"))
            readers = [asyncio.create_task(drain(ws)) for ws in sockets]
            await asyncio.sleep(2)
            connected = rss_kib(gateway.pid)
            per_frame_socket = max(1, args.frames // len(sockets))
            sent = 0
            rounds = []
            for _ in range(2):  # a second round tells a leak (grows again) from the allocator's high-water mark
                for _ in range(per_frame_socket):
                    for ws in sockets:
                        await ws.send_str(hostile(sent))
                        sent += 1
                    await asyncio.sleep(0.05)
                await asyncio.sleep(12)  # refill the strike budgets before the next round
                rounds.append(rss_kib(gateway.pid))
            after = rounds[0]
            open_after = sum(1 for ws in sockets if not ws.closed)

            flooder = await session.ws_connect(f"http://127.0.0.1:25503/?Authorization={mint(SECRET, 'mallory')}")
            flood_reader = asyncio.create_task(drain(flooder))
            flood_sent = 0
            for i in range(args.frames):
                if flooder.closed:
                    break
                try:
                    await flooder.send_str(hostile(i))
                except (ConnectionError, RuntimeError, aiohttp.ClientError):
                    break
                flood_sent += 1
            await asyncio.sleep(2)
            flood_close = flooder.close_code
            final = rss_kib(gateway.pid)
            for task in [*readers, flood_reader]:
                task.cancel()
            gc.collect()
        n = len(sockets)
        print(
            f"# {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"{n} connections, {sent} hostile frames spread over them"
        )
        print(f"gateway RSS before connecting: {base / 1024:.1f} MiB")
        print(f"after {n} connections: {connected / 1024:.1f} MiB ({(connected - base) / n:.1f} KiB per connection)")
        print(f"after {sent // 2} hostile frames: {after / 1024:.1f} MiB ({(after - base) / n:.1f} KiB per connection)")
        print(
            f"after {sent} hostile frames: {rounds[1] / 1024:.1f} MiB ({(rounds[1] - base) / n:.1f} KiB per connection); "
            f"{open_after} of {n} sockets still open"
        )
        print(
            f"one socket flooding alone: closed with {flood_close} after {flood_sent} frames sent; "
            f"gateway RSS {final / 1024:.1f} MiB"
        )


async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--frames", type=int, default=10_000)
    args = parser.parse_args()
    random.seed(1)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
