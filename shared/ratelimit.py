"""Token buckets, pure: the gateway's per-user and per-connection limits and the query service's
per-user REST limits are all made of these."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from .settings import Rate


class TokenBucket:
    """``rate.burst`` tokens at once, refilled at ``rate.per_second``; each allowed action takes one."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: Rate, now: float | None = None) -> None:
        self.rate = rate.per_second
        self.burst = float(rate.burst)
        self.tokens = self.burst
        self.at = time.monotonic() if now is None else now

    def _refill(self, now: float | None) -> float:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        return now

    def take(self, now: float | None = None) -> bool:
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self, now: float | None = None) -> float:
        """Seconds until :meth:`take` would succeed (0.0 if it would now)."""
        self._refill(now)
        return max(0.0, (1 - self.tokens) / self.rate)


K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """A value per key for the ``capacity`` most recently used keys; the least recently used is
    dropped past that. Holding buckets, dropping one forgives its owner (a new bucket is full), so
    the memory stays bounded whatever the number of callers, at no cost to anybody else."""

    def __init__(self, capacity: int, new: Callable[[], V]) -> None:
        self.capacity = capacity
        self.new = new
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V:
        value = self.items.get(key)
        if value is None:
            value = self.items[key] = self.new()
            if len(self.items) > self.capacity:
                self.items.popitem(last=False)
        else:
            self.items.move_to_end(key)
        return value

    def __len__(self) -> int:
        return len(self.items)
