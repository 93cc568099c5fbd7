"""Rate limits, pure: token buckets per user (shared by the user's connections on this gateway)
and per connection (frames of any kind, and refusals before the connection is closed)."""

from __future__ import annotations

from shared.ratelimit import TokenBucket
from shared.settings import Limits, Rate

# Any frame, per connection: parsing costs even when the frame is refused.
FRAMES = Rate(per_second=50, burst=200)
# Refusals (rate limited, invalid) a connection may collect before it is closed with 1008.
STRIKES = Rate(per_second=1, burst=30)


class UserLimits:
    """One user's buckets on this gateway: every connection of the user draws from them."""

    __slots__ = ("limits", "buckets")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.buckets: dict[str, TokenBucket] | None = None  # made by the first frame: idle users cost less

    def allow(self, action: str) -> bool:
        if self.buckets is None:
            self.buckets = {
                "send-message": TokenBucket(self.limits.send),
                "read-messages": TokenBucket(self.limits.read),
                "typing": TokenBucket(self.limits.typing),
            }
        bucket = self.buckets.get(action)
        return bucket is None or bucket.take()
