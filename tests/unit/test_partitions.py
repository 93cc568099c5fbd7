"""Partition assignment: balanced, the same in every process, and stable when members change."""

from __future__ import annotations

import pytest

from shared.partitions import assign, owned


def counts(result: dict[str, frozenset[int]]) -> list[int]:
    return sorted(len(ps) for ps in result.values())


@pytest.mark.parametrize(
    ("members", "partitions", "expected_counts"),
    [
        (["a"], 32, [32]),
        (["a", "b"], 32, [16, 16]),
        (["a", "b", "c"], 32, [10, 11, 11]),
        ([f"w{i}" for i in range(10)], 32, [3] * 8 + [4] * 2),
        ([f"w{i}" for i in range(12)], 8, [0] * 4 + [1] * 8),  # more replicas than partitions: some idle
        (["a", "b"], 1, [0, 1]),
    ],
)
def test_every_partition_has_one_owner_and_shares_differ_by_at_most_one(members, partitions, expected_counts):
    result = assign(members, partitions)
    assert set(result) == set(members)
    assert counts(result) == expected_counts
    every = [p for ps in result.values() for p in ps]
    assert sorted(every) == list(range(partitions))  # each exactly once


def test_no_members_no_assignment():
    assert assign([], 8) == {}


def test_the_answer_does_not_depend_on_order_or_duplicates():
    assert assign(["c", "a", "b"], 32) == assign(["a", "b", "c", "a"], 32)


def test_owned_counts_the_asker_as_live():
    assert owned([], "me", 4) == frozenset(range(4))
    assert owned(["other"], "me", 4) | owned(["me"], "other", 4) == frozenset(range(4))


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_a_join_or_a_leave_moves_few_partitions(n):
    members = [f"writer-{i}" for i in range(n)]
    before = assign(members, 32)
    after = assign([*members, "writer-new"], 32)
    moved = sum(len(before[m] - after[m]) for m in members)
    # the newcomer needs about 32/(n+1); a scheme that reshuffled would move most of the 32
    assert len(after["writer-new"]) >= 32 // (n + 1)
    assert moved <= 2 * (32 // (n + 1) + 1)
    # and the leave that follows gives everything back where it was
    assert assign(members, 32) == before
