"""cancel_and_wait ends a task even when one cancel is swallowed (Python 3.11's wait_for)."""

from __future__ import annotations

import asyncio

from shared.tasks import cancel_and_wait


async def test_a_task_that_swallows_one_cancel_is_still_ended():
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed == 0:  # what wait_for does when its inner future completes at that moment
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 3)
    assert task.cancelled() and swallowed == 1


async def test_nothing_to_cancel():
    await cancel_and_wait(None)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await cancel_and_wait(done)
