"""Idle sockets: what many open, quiet connections cost the gateways and Redis.

It starts private Postgres, Redis and RabbitMQ (devtools/stack.py, ports 26461-26465) and
``--gateways`` gateways (from port 26561), then opens ``--sockets`` WebSockets of distinct users,
spread evenly over the gateways, from holder processes of at most ``--per-process`` sockets each
(a process may open at most 20,000 files here). The holders are raw asyncio protocols that
answer pings and nothing else, so they cost little memory and CPU. Once every socket is open it
waits ``--settle`` seconds, then measures for ``--hold`` seconds: each gateway's RSS (and how much
of it each socket added, from the gateway's RSS before any socket opened), its CPU, and the
commands Redis processed.

    python -m bench.sockets --sockets 15000 --gateways 1 --hold 40
    python -m bench.sockets --sockets 50000 --gateways 3 --hold 40

``bench/load.py --idle N`` uses the same holders to keep N idle sockets open during a message load.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import platform
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis

from bench import cpu
from devtools.stack import private_system, service_env, spawn_service, wait_ready
from shared.auth import mint

SECRET = "bench-secret-bench-secret-bench-secret-0123"
FIRST_PORT = 26561
CONNECTING = 50  # handshakes in flight per holder process (the gateways' accept queue is 128)


class Idle(asyncio.Protocol):
    """One WebSocket client that only answers pings (RFC 6455: a client's frames are masked; a
    zero mask key leaves the payload as it is)."""

    def __init__(self, request: bytes, opened: asyncio.Future[bool], holder: Holder) -> None:
        self.request = request
        self.opened = opened
        self.holder = holder
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            if not head.startswith(b"HTTP/1.1 101"):
                if not self.holder.refusals:
                    print(json.dumps({"refused": head[:200].decode(errors="replace")}), file=sys.stderr, flush=True)
                self.holder.refusals += 1
                self.opened.set_result(False) if not self.opened.done() else None
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(True)
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            opcode, size = buf[0] & 0x0F, buf[1] & 0x7F
            at = 2
            if size == 126:
                if len(buf) < 4:
                    break
                size, at = struct.unpack("!H", buf[2:4])[0], 4
            elif size == 127:
                if len(buf) < 10:
                    break
                size, at = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < at + size:
                break
            payload, buf = buf[at : at + size], buf[at + size :]
            assert self.transport is not None
            if opcode == 0x9:  # ping: pong with the same payload
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
                self.holder.pings += 1
            elif opcode == 0x8:  # close: the server ended it
                self.holder.closed += 1
                self.transport.close()
        self.buffer = buf

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        elif self.upgraded:
            self.holder.lost += 1


class Holder:
    """One holder process's sockets."""

    def __init__(self) -> None:
        self.pings = 0
        self.closed = 0
        self.lost = 0
        self.refusals = 0
        self.transports: list[asyncio.BaseTransport] = []

    async def open(self, port: int, user: str) -> bool:
        loop = asyncio.get_running_loop()
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /?Authorization={mint(SECRET, user, ttl=24 * 3600)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        for _ in range(10):  # a refused or reset attempt (a full accept queue) is tried again
            opened: asyncio.Future[bool] = loop.create_future()
            try:
                transport, _ = await loop.create_connection(
                    functools.partial(Idle, request, opened, self), "127.0.0.1", port
                )
                ok = await asyncio.wait_for(opened, 30)
            except (OSError, asyncio.TimeoutError):
                ok = False
            if ok:
                self.transports.append(transport)
                return True
            if self.refusals:
                return False  # the gateway answered, and not with an upgrade
            await asyncio.sleep(0.2)
        return False


async def hold(ports: Sequence[int], first: int, count: int, prefix: str) -> None:
    """The holder process: open ``count`` sockets (users ``<prefix><first>``...), report, then
    hold them until stdin closes, and report again."""
    holder = Holder()
    semaphore = asyncio.Semaphore(CONNECTING)

    async def one(i: int) -> bool:
        async with semaphore:
            return await holder.open(ports[i % len(ports)], f"{prefix}{i}")

    results = await asyncio.gather(*(one(i) for i in range(first, first + count)))
    print(json.dumps({"connected": sum(results), "failed": count - sum(results)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print(json.dumps({"pings": holder.pings, "closed": holder.closed, "lost": holder.lost}), flush=True)
    for transport in holder.transports:
        transport.close()


class Holders:
    """Holder processes for ``sockets`` idle sockets on ``ports`` (round robin)."""

    def __init__(self, ports: Sequence[int], sockets: int, per_process: int, prefix: str = "idle-") -> None:
        self.procs = []
        for first in range(0, sockets, per_process):
            count = min(per_process, sockets - first)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.sockets", "--hold-for", ",".join(map(str, ports))]
                    + ["--first", str(first), "--count", str(count), "--prefix", prefix],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )

    def opened(self) -> tuple[int, int]:
        """Wait until every holder opened its sockets: (connected, failed)."""
        connected = failed = 0
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"holder {proc.pid} exited with {proc.wait()}")
            report = json.loads(line)
            connected, failed = connected + report["connected"], failed + report["failed"]
        return connected, failed

    def close(self) -> dict[str, int]:
        """Close every socket; the holders' counts of pings answered and server closes."""
        totals = {"pings": 0, "closed": 0, "lost": 0}
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line:
                for key, value in json.loads(line).items():
                    totals[key] += value
            proc.wait(30)
        return totals

    def rss(self) -> int:
        return sum(rss_bytes(p.pid) for p in self.procs)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def redis_commands(client: aioredis.Redis) -> int:
    return int((await client.info("stats"))["total_commands_processed"])


async def main_async(args: argparse.Namespace) -> int:
    async with private_system("chat-sockets-", 26460, fsync=False) as (stack, state, procs):
        env = {**os.environ, **service_env(stack, SECRET), "CHAT_HOST": "127.0.0.1", "CHAT_LOG_LEVEL": "warning"}
        ports = [FIRST_PORT + i for i in range(args.gateways)]
        gateways = []
        for port in ports:
            procs.append(spawn_service("gateway", {**env, "CHAT_PORT": str(port)}, state / f"gateway-{port}.log"))
            gateways.append(procs[-1])
        for port, proc in zip(ports, gateways):
            await wait_ready(f"http://127.0.0.1:{port}", proc=proc)
        await asyncio.sleep(2)
        base = [rss_bytes(p.pid) for p in gateways]
        redis = aioredis.Redis.from_url(stack.env()["CHAT_REDIS_URL"])
        started = time.monotonic()
        holders = Holders(ports, args.sockets, args.per_process)
        try:
            connected, failed = await asyncio.to_thread(holders.opened)
            opening = time.monotonic() - started
            await asyncio.sleep(args.settle)
            groups = {f"gateway-{port}": [p.pid] for port, p in zip(ports, gateways)}
            cpu_before, commands_before, at = cpu.sample(groups), await redis_commands(redis), time.monotonic()
            await asyncio.sleep(args.hold)
            cpu_after, commands_after = cpu.sample(groups), await redis_commands(redis)
            seconds = time.monotonic() - at
            rss = [rss_bytes(p.pid) for p in gateways]
            holder_rss = holders.rss()
        finally:
            counts = await asyncio.to_thread(holders.close)
            await redis.aclose()
        per_gateway = [len(range(i, args.sockets, args.gateways)) for i in range(args.gateways)]
        commands = (commands_after - commands_before - 1) / seconds
        print(
            f"# {connected} idle sockets ({failed} failed) of distinct users on {args.gateways} gateway(s), "
            f"opened in {opening:.0f} s, held {seconds:.0f} s after {args.settle:.0f} s; "
            f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        print("gateway   sockets  rss_mib  kib_per_socket  cpu_%_of_a_core")
        for port, sockets, before, after in zip(ports, per_gateway, base, rss):
            used = cpu_after[f"gateway-{port}"] - cpu_before[f"gateway-{port}"]
            print(
                f"{port:<9} {sockets:>7} {after / 2**20:>8.1f} {(after - before) / 1024 / max(1, sockets):>15.2f}"
                f" {100 * used / seconds:>16.2f}"
            )
        print(
            f"redis: {commands:.1f} commands/s, {60 * commands / max(1, connected):.3f} per socket a minute; "
            f"holders: {holder_rss / 2**20:.0f} MiB RSS, {counts['pings']} pings answered, "
            f"{counts['closed']} closed by the server, {counts['lost']} lost"
        )
        return 0 if connected == args.sockets and counts["closed"] == counts["lost"] == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=15_000)
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--hold", type=float, default=40, help="seconds measured")
    parser.add_argument("--settle", type=float, default=5, help="seconds between the last open and the measurement")
    parser.add_argument("--per-process", type=int, default=10_000, help="sockets per holder process (at most ~19,000)")
    parser.add_argument("--hold-for", help=argparse.SUPPRESS)  # a holder process: the gateways' ports
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="idle-", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold_for:
        from shared.service import install_uvloop

        install_uvloop()
        asyncio.run(hold([int(p) for p in args.hold_for.split(",")], args.first, args.count, args.prefix))
        return
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
