"""Per-user REST limits, pure: one bucket per user for reads (every GET but searches), one for
searches (each may read many messages) and one for ``POST /conversation``, which writes a
conversation and notifies its members' sockets.

The buckets live in this process: with N query replicas behind a load balancer a user gets at
most N times the rate (docs/security.md). The most recent ``CAPACITY`` users are kept; a user
dropped past that starts again with a full bucket, so memory stays bounded whatever the number of
callers, and forgetting only ever forgives.
"""

from __future__ import annotations

import math
from enum import Enum

import prometheus_client

from shared.ratelimit import Recent, TokenBucket
from shared.settings import RestLimits

from .responses import ApiError

CAPACITY = 100_000  # users whose buckets are kept (about 200 bytes each)

LIMITED = prometheus_client.Counter(
    "chat_query_rate_limited_total", "REST requests refused with 429 by a user's bucket", ["bucket"]
)


class Bucket(Enum):
    READ = "read"
    CREATE = "create"
    SEARCH = "search"


class RestLimiter:
    def __init__(self, limits: RestLimits, capacity: int = CAPACITY) -> None:
        self.buckets = {
            Bucket.READ: Recent[str, TokenBucket](capacity, lambda: TokenBucket(limits.read)),
            Bucket.CREATE: Recent[str, TokenBucket](capacity, lambda: TokenBucket(limits.create)),
            Bucket.SEARCH: Recent[str, TokenBucket](capacity, lambda: TokenBucket(limits.search)),
        }

    def check(self, user: str, bucket: Bucket, now: float | None = None) -> None:
        """Take a token of ``user``'s ``bucket``, or raise 429 with ``Retry-After`` (whole seconds)."""
        tokens = self.buckets[bucket].get(user)
        if tokens.take(now):
            return
        LIMITED.labels(bucket.value).inc()
        retry = max(1, math.ceil(tokens.wait(now)))
        raise ApiError(
            429, "rate_limited", f"too many requests, retry in {retry} s", headers={"Retry-After": str(retry)}
        )
