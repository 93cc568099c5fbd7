"""The consumer wrapper's rule: a failing item fails alone, retries happen in place."""

from __future__ import annotations

import asyncio

from shared.amqp import Backoff, Poison, Retryable, isolate


class Recorder:
    def __init__(self, bad: set[int] = frozenset(), flaky: dict[int, int] | None = None) -> None:
        self.bad = bad
        self.flaky = dict(flaky or {})  # item -> how many more times it raises Retryable
        self.calls: list[list[int]] = []
        self.done: list[int] = []
        self.poisoned: list[tuple[int, str]] = []

    async def handle(self, items: list[int]) -> None:
        self.calls.append(list(items))
        for item in items:
            if self.flaky.get(item, 0) > 0:
                self.flaky[item] -= 1
                raise Retryable("database down")
        culprit = next((i for i in items if i in self.bad), None)
        if culprit is not None:
            raise ValueError(f"cannot store {culprit}")  # a bug, or a value the database refuses
        self.done.extend(items)  # all or nothing, like a transaction

    async def rejected(self, item: int, reason: str) -> None:
        self.poisoned.append((item, reason))


def fast() -> Backoff:
    return Backoff(first=0.001, cap=0.001)


async def test_a_clean_batch_is_one_call():
    r = Recorder()
    assert await isolate(list(range(10)), r.handle, r.rejected, fast())
    assert r.calls == [list(range(10))] and r.done == list(range(10)) and not r.poisoned


async def test_one_culprit_fails_alone_and_the_rest_is_handled_in_order():
    r = Recorder(bad={5})
    assert await isolate(list(range(16)), r.handle, r.rejected, fast())
    assert r.done == [i for i in range(16) if i != 5]
    assert r.poisoned == [(5, "ValueError: cannot store 5")]
    assert len(r.calls) <= 1 + 2 * 4  # halving: about two calls per level, not one per item


async def test_several_culprits_and_explicit_poison():
    class Explicit(Recorder):
        async def handle(self, items: list[int]) -> None:
            if 0 in items:
                raise Poison("undecodable")
            await super().handle(items)

    r = Explicit(bad={3, 7})
    assert await isolate(list(range(8)), r.handle, r.rejected, fast())
    assert r.done == [1, 2, 4, 5, 6]
    assert [item for item, _ in r.poisoned] == [0, 3, 7]


async def test_a_retryable_failure_retries_the_same_piece_without_redoing_earlier_ones():
    r = Recorder(bad={1}, flaky={6: 3})
    retries: list[str] = []
    assert await isolate(list(range(8)), r.handle, r.rejected, fast(), on_retry=lambda e: retries.append(str(e)))
    assert r.done == [0, 2, 3, 4, 5, 6, 7]
    assert len(retries) == 3
    assert r.done.count(0) == 1  # what succeeded before the retries was not handled twice


async def test_stopping_during_retries_leaves_the_rest_unsettled():
    r = Recorder(flaky={0: 10**6})
    backoff = Backoff(first=0.01, cap=0.01)

    async def stop_soon() -> None:
        await asyncio.sleep(0.05)
        backoff.stopping.set()

    stopper = asyncio.create_task(stop_soon())
    assert await isolate([0, 1], r.handle, r.rejected, backoff) is False
    await stopper
    assert r.done == [] and r.poisoned == []


async def test_a_failing_rejection_hook_does_not_stop_the_batch():
    r = Recorder(bad={2})

    async def broken(item: int, reason: str) -> None:
        raise KeyError("bug in the hook")

    assert await isolate([1, 2, 3], r.handle, broken, fast())
    assert r.done == [1, 3]
