"""Where a process stops answering: event-loop lag and garbage-collector pauses, as metrics and logs.

A coroutine that blocks (a synchronous call, a long computation) or a full collection holds
every connection of the process at once; these two measures say which, and when. The lag is
how late a 50 ms timer fires; a lag or pause over ``REPORT_AFTER`` is logged as an event.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import prometheus_client
from aiohttp import web

from .log import get_logger
from .tasks import cancel_and_wait

log = get_logger(__name__)
TICK = 0.05
REPORT_AFTER = 0.1
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
LAG = prometheus_client.Histogram(
    "chat_event_loop_lag_seconds", "How late a 50 ms timer fired: time the loop was held", buckets=BUCKETS
)
GC_PAUSE = prometheus_client.Histogram(
    "chat_gc_pause_seconds", "Garbage-collector pauses", ["generation"], buckets=BUCKETS
)


async def watch_loop(report: Callable[[float], None], tick: float = TICK) -> None:
    """Forever: sleep ``tick`` and ``report`` how late the wake-up came (seconds)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + tick
        await asyncio.sleep(tick)
        report(max(0.0, loop.time() - due))


class GcTimer:
    """A ``gc.callbacks`` entry that times each collection and reports (seconds, gc's info)."""

    def __init__(self, report: Callable[[float, dict[str, Any]], None]) -> None:
        self.report = report
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.report(time.perf_counter() - self._started, info)

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def _lagged(lag: float) -> None:
    LAG.observe(lag)
    if lag > REPORT_AFTER:
        log.warning("event_loop_stalled", ms=round(lag * 1000, 1))


def _paused(pause: float, info: dict[str, Any]) -> None:
    GC_PAUSE.labels(str(info["generation"])).observe(pause)
    if pause > REPORT_AFTER:
        log.warning("gc_pause", ms=round(pause * 1000, 1), generation=info["generation"], collected=info["collected"])


async def watch(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: watch this process's loop and collector for as long as the app runs."""
    timer = GcTimer(_paused)
    timer.install()
    task = asyncio.create_task(watch_loop(_lagged), name="stall-watch")
    yield
    await cancel_and_wait(task)
    timer.remove()
