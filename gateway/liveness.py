"""Finding sockets whose peer is gone, for the whole gateway in one task.

aiohttp's own heartbeat keeps a timer per socket and moves it on every frame; at tens of
thousands of idle sockets those timers are a good part of a socket's memory and of the idle
gateway's CPU. Here one sweep every half interval looks at every socket: one that sent nothing
(frames, pongs, pings) for a whole interval is pinged; one that still sent nothing by the next
sweep is dropped (1006, as aiohttp's heartbeat does), and its client reconnects and catches up.
A sweep is spread over most of its half interval, ``SWEEP_BATCH`` sockets at a time: sockets
that connected together would otherwise be pinged together, and tens of thousands of pongs
arriving in one burst held up everyone's frames for a third of a second (bench/load.py --idle).
"""

from __future__ import annotations

import asyncio
import math

import prometheus_client

from .hub import Hub

PING = b"\x89\x00"  # an empty ping frame (a server's frames are not masked)
SWEEP_BATCH = 250
SPREAD = 0.8  # of the half interval a sweep is spread over

DROPPED = prometheus_client.Counter(
    "chat_gateway_unresponsive_dropped_total", "Connections dropped because their peer answered no ping"
)


def pong(payload: bytes) -> bytes:
    """A pong frame answering a client's ping of ``payload`` (at most 125 bytes, RFC 6455 5.5)."""
    return bytes((0x8A, len(payload))) + payload


async def sweep(hub: Hub, spread: float = 0.0) -> None:
    """One sweep over ``spread`` seconds (``quiet`` counts the sweeps a socket has been silent through)."""
    conns = list(hub.by_id.values())
    pause = spread / max(1, math.ceil(len(conns) / SWEEP_BATCH))
    for i, conn in enumerate(conns):
        if conn.heard:
            conn.heard, conn.quiet = False, 0
        elif not conn.closing:
            conn.quiet += 1
            if conn.quiet == 2:  # silent for a whole interval: is anybody there?
                conn.push_wire(PING)
            elif conn.quiet > 2:  # no answer to the ping within half an interval
                DROPPED.inc()
                conn.abort()
        if i % SWEEP_BATCH == SWEEP_BATCH - 1:
            await asyncio.sleep(pause)


async def keep_alive(hub: Hub, interval: float) -> None:
    """The owner's loop (cancelled at shutdown)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await sweep(hub, spread=SPREAD * interval / 2)
        await asyncio.sleep(max(0.0, interval / 2 - (loop.time() - started)))
