"""The query service's per-user buckets (query/limits.py) and the bucket itself (shared/ratelimit.py)."""

from __future__ import annotations

import pytest

from query.limits import Bucket, RestLimiter
from query.responses import ApiError
from shared.ratelimit import Recent, TokenBucket
from shared.settings import Rate, RestLimits


def test_a_bucket_allows_its_burst_then_its_rate_and_says_how_long_to_wait():
    bucket = TokenBucket(Rate(2, 3), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait(0.0) == pytest.approx(0.5)
    assert not bucket.take(0.4) and bucket.take(0.5)
    assert bucket.wait(10.0) == 0.0 and bucket.tokens == 3  # refills to its burst, no further


def refusal(limiter: RestLimiter, user: str, bucket: Bucket, now: float) -> ApiError | None:
    try:
        limiter.check(user, bucket, now)
    except ApiError as exc:
        return exc
    return None


def test_each_user_has_buckets_of_their_own_and_429_says_when_to_retry():
    limiter = RestLimiter(RestLimits(read=Rate(1, 5), create=Rate(0.25, 2)))
    assert [refusal(limiter, "mallory", Bucket.READ, 0.0) for _ in range(5)] == [None] * 5
    limited = refusal(limiter, "mallory", Bucket.READ, 0.0)
    assert limited is not None and (limited.status, limited.code) == (429, "rate_limited")
    assert limited.headers == {"Retry-After": "1"}
    assert refusal(limiter, "bob", Bucket.READ, 0.0) is None  # a bystander's bucket is untouched
    assert refusal(limiter, "mallory", Bucket.CREATE, 0.0) is None  # reads and creates are apart
    assert refusal(limiter, "mallory", Bucket.CREATE, 0.0) is None
    created = refusal(limiter, "mallory", Bucket.CREATE, 0.1)
    assert created is not None and created.headers == {"Retry-After": "4"}  # 1 token at 0.25/s: 3.6 s, rounded up
    assert refusal(limiter, "mallory", Bucket.READ, 1.0) is None  # refilled at its rate


def test_buckets_are_kept_for_the_most_recent_users_only():
    limiter = RestLimiter(RestLimits(read=Rate(1, 1)), capacity=3)
    assert refusal(limiter, "u0", Bucket.READ, 0.0) is None
    assert refusal(limiter, "u0", Bucket.READ, 0.0) is not None
    for i in range(1, 4):  # three newer users push u0 out
        limiter.check(f"u{i}", Bucket.READ, 0.0)
    assert len(limiter.buckets[Bucket.READ]) == 3
    assert refusal(limiter, "u0", Bucket.READ, 0.0) is None  # forgotten: forgiven, never blamed


def test_recent_keeps_the_most_recently_used():
    recent = Recent[str, list[int]](2, list)
    recent.get("a").append(1)
    recent.get("b")
    recent.get("a")  # a is now the most recent
    recent.get("c")  # b goes
    assert list(recent.items) == ["a", "c"] and recent.get("a") == [1]
