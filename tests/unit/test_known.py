"""What a writer remembers of its conversations: bounded, least recently used dropped first."""

from __future__ import annotations

import uuid

import pytest

from writer.known import Known
from writer.plan import Conversation

A, B, C = (uuid.UUID(int=i) for i in (1, 2, 3))


def of(members: int, last_seq: int = 0) -> Conversation:
    return Conversation(last_seq, tuple(f"u{i}" for i in range(members)))


@pytest.mark.parametrize(
    ("max_conversations", "max_members", "puts", "kept", "members"),
    [
        (10, 100, [{A: of(2)}, {B: of(3)}], [A, B], 5),
        (2, 100, [{A: of(2)}, {B: of(2)}, {C: of(2)}], [B, C], 4),  # by count, the oldest first
        (10, 5, [{A: of(2)}, {B: of(2)}, {C: of(2)}], [B, C], 4),  # by members
        (10, 5, [{A: of(6)}], [], 0),  # one too large for the budget is not kept at all
        (10, 100, [{A: of(2, 1)}, {A: of(2, 7)}], [A], 2),  # replaced, counted once
    ],
)
def test_bounds(max_conversations, max_members, puts, kept, members):
    known = Known(max_conversations, max_members)
    for put in puts:
        known.put(put)
    assert list(known.entries) == kept and known.members == members


def test_a_lookup_makes_a_conversation_the_most_recently_used():
    known = Known(2, 100)
    known.put({A: of(1), B: of(1)})
    assert known.get([A, C]) == {A: of(1)}  # C unknown: absent, not remembered as unknown
    known.put({C: of(1)})
    assert list(known.entries) == [A, C]


def test_what_was_read_before_a_clear_is_not_put_back():
    known = Known(10, 100)
    known.put({A: of(2, 3)})
    generation = known.generation
    known.clear()  # e.g. a partition changed hands while a batch was reading
    known.put({B: of(2, 5)}, generation)
    assert known.entries == {} and known.members == 0
    known.put({B: of(2, 5)}, known.generation)
    assert known.get([B]) == {B: of(2, 5)}


def test_forget():
    known = Known(10, 100)
    known.put({A: of(2), B: of(3)})
    known.forget([A, C])
    assert list(known.entries) == [B] and known.members == 3
