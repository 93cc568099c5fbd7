"""The stall measures: a collection is timed and reported with its generation; a blocked loop is seen."""

from __future__ import annotations

import asyncio
import gc
import time

from shared.stalls import GcTimer, watch_loop


def test_a_collection_is_timed_and_reported_with_its_generation():
    seen: list[tuple[float, int]] = []
    timer = GcTimer(lambda pause, info: seen.append((pause, info["generation"])))
    timer.install()
    try:
        gc.collect()
    finally:
        timer.remove()
    assert seen and seen[-1][1] == 2 and seen[-1][0] >= 0
    assert timer not in gc.callbacks


async def test_a_blocked_loop_is_reported_as_late():
    lags: list[float] = []
    task = asyncio.create_task(watch_loop(lags.append, tick=0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # hold the loop, as a blocking call would
    await asyncio.sleep(0.05)
    task.cancel()
    assert max(lags) >= 0.15
