"""When each socket's token runs out, for the whole gateway in one task.

A timer per socket costs each idle socket about half a kilobyte; here the deadlines are kept by
whole second (``Expiries``), and one task closes, every second, the sessions whose second has
come. A session is closed within a second of its deadline.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Protocol


class Expiring(Protocol):
    def expired(self) -> None: ...


class Expiries:
    """Deadlines (epoch seconds) of sessions, by the second they fall due in."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._due: dict[int, list[Expiring]] = {}
        self._next = math.floor(clock())  # the first second not yet handled

    def _second(self, deadline: float) -> int:
        return max(self._next, math.ceil(deadline))

    def set(self, session: Expiring, deadline: float, previous: float | None = None) -> None:
        """Close ``session`` at ``deadline`` (instead of at ``previous``)."""
        if previous is not None:
            self.discard(session, previous)
        self._due.setdefault(self._second(deadline), []).append(session)

    def discard(self, session: Expiring, deadline: float) -> None:
        second = self._second(deadline)
        sessions = self._due.get(second)
        if sessions is not None and session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._due[second]

    def due(self) -> list[Expiring]:
        """The sessions whose deadline has passed, taken off the books."""
        now = self.clock()
        out: list[Expiring] = []
        while self._next <= now:
            out.extend(self._due.pop(self._next, ()))
            self._next += 1
        return out

    def __len__(self) -> int:
        return sum(map(len, self._due.values()))


async def close_expired(expiries: Expiries) -> None:
    """The owner's loop (cancelled at shutdown)."""
    while True:
        await asyncio.sleep(1.0)
        for session in expiries.due():
            session.expired()
