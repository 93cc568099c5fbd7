"""Owned background tasks: whoever starts one cancels and awaits it."""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_SECONDS = 0.5


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
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
    failure = None if task.cancelled() else task.exception()
    if failure is not None:
        raise failure
