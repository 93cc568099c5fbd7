"""Owned background tasks: whoever starts one cancels and awaits it."""

from __future__ import annotations

import asyncio

RECANCEL_SECONDS = 0.5


async def cancel_and_wait(task: asyncio.Task | None) -> None:  # type: ignore[type-arg]
    """Cancel ``task`` (if any) and wait until it has finished, swallowing its cancellation.

    The cancel is repeated until the task ends: on Python 3.11, ``asyncio.wait_for`` returns the
    inner result instead of raising CancelledError when both happen at once, so a loop around
    it can swallow a single cancel and run on for ever (fixed in 3.12's wait_for).
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
