"""The writer's pure core: what a batch stores, announces and refuses, from commands and state."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timezone

import pytest

from shared.envelope import (
    CommandRejected,
    MessageStored,
    Origin,
    ReadMessages,
    ReadUpdated,
    SendMessage,
    StartTyping,
    TypingStarted,
)
from writer.plan import UNRESOLVED, Conversation, Stored, plan

NOW = datetime(2026, 11, 28, 8, 0, tzinfo=timezone.utc)
C1, C2, GONE = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=99)
ORIGIN = Origin("gw-1", "conn-1")
STATE = {
    C1: Conversation(last_seq=4, members=("alice", "bob")),
    C2: Conversation(last_seq=0, members=("alice", "carol")),
}


def send(user: str, cid: uuid.UUID, temp: str, content: str = "hi") -> SendMessage:
    return SendMessage(user_id=user, conversation_id=cid, temp_message_id=temp, content=content, origin=ORIGIN)


def ids():
    counter = itertools.count(1000)
    return lambda: uuid.UUID(int=next(counter))


def run(commands, existing=None):
    return plan(commands, STATE, existing or {}, NOW, new_id=ids())


def summary(events):
    out = []
    for e in events:
        if isinstance(e, MessageStored):
            out.append(("stored", e.conversation_id.int, e.seq, e.temp_message_id))
        elif isinstance(e, CommandRejected):
            out.append(("rejected", e.code, e.temp_message_id))
        elif isinstance(e, ReadUpdated):
            out.append(("read", e.conversation_id.int, e.user_id))
        elif isinstance(e, TypingStarted):
            out.append(("typing", e.conversation_id.int, e.user_id))
    return out


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        # numbering continues from last_seq, per conversation, in command order
        (
            [send("alice", C1, "a"), send("bob", C1, "b"), send("alice", C2, "c")],
            [("stored", 1, 5, "a"), ("stored", 1, 6, "b"), ("stored", 2, 1, "c")],
        ),
        # refusals take no seq
        (
            [
                send("alice", GONE, "x"),
                send("carol", C1, "y"),
                send("alice", C1, "e", "  \n "),
                send("alice", C1, "ok"),
            ],
            [
                ("rejected", "unknown_conversation", "x"),
                ("rejected", "not_a_participant", "y"),
                ("rejected", "empty_content", "e"),
                ("stored", 1, 5, "ok"),
            ],
        ),
        (
            [send("alice", C1, "long", "x" * 1001), send("alice", C1, "", "hi")],
            [("rejected", "content_too_long", "long"), ("rejected", "invalid_frame", "")],
        ),
        # a second copy in the same batch is a duplicate of the first
        ([send("alice", C1, "d"), send("alice", C1, "d")], [("stored", 1, 5, "d"), ("stored", 1, 5, "d")]),
        # read and typing are announced to the conversation's members
        (
            [
                ReadMessages(user_id="bob", conversation_id=C1, origin=ORIGIN),
                StartTyping(user_id="alice", conversation_id=C2, origin=ORIGIN),
            ],
            [("read", 1, "bob"), ("typing", 2, "alice")],
        ),
    ],
)
def test_plan_table(commands, expected):
    assert summary(run(commands).events) == expected


def test_a_read_that_moves_nothing_writes_nothing_and_answers_the_reader_alone():
    state = {C1: Conversation(last_seq=4, members=("alice", "bob"), read={"alice": 4, "bob": 2})}
    read = [ReadMessages(user_id=u, conversation_id=C1, origin=ORIGIN) for u in ("alice", "bob", "bob")]
    result = plan(read, state, {}, NOW, new_id=ids())
    # alice had read it all, bob's second read adds nothing: each is answered, to the reader alone
    reads = [(e.user_id, e.last_read_seq, e.participants) for e in result.events if isinstance(e, ReadUpdated)]
    assert reads == [("alice", 4, ["alice"]), ("bob", UNRESOLVED, ["alice", "bob"]), ("bob", 4, ["bob"])]
    assert result.read_to == {(C1, "bob"): 4}  # the only write
    resolved = result.resolved({(C1, "bob"): 4})
    assert [e.last_read_seq for e in resolved if isinstance(e, ReadUpdated)] == [4, 4, 4]
    # a read after one's own message in the same batch has nothing left to read either
    result = plan([send("bob", C1, "b"), read[1]], state, {}, NOW, new_id=ids())
    assert summary(result.events) == [("stored", 1, 5, "b"), ("read", 1, "bob")]
    assert result.events[1].participants == ["bob"] and result.events[1].last_read_seq == 5
    assert result.read_to == {(C1, "bob"): 5}  # from the send: a sender has read their own message


def test_empty_content_rejection_carries_the_temp_id():
    result = run([send("alice", C1, "t1", "   ")])
    assert summary(result.events) == [("rejected", "empty_content", "t1")]
    assert result.rejected == 1 and not result.writes


def test_rows_latest_and_read_pointers():
    result = run(
        [
            send("alice", C1, "a", "one  "),
            send("bob", C1, "b", "two"),
            ReadMessages(user_id="alice", conversation_id=C1, origin=ORIGIN),
        ]
    )
    assert [(m.seq, m.content) for m in result.new_messages] == [(5, "one"), (6, "two")]  # trailing space trimmed
    assert result.latest[C1].seq == 6 and result.latest[C1].sender_id == "bob"
    assert result.read_to == {(C1, "alice"): 6, (C1, "bob"): 6}
    assert (result.stored, result.duplicates, result.rejected) == (2, 0, 0)
    read = [e for e in result.events if isinstance(e, ReadUpdated)]
    assert read[0].last_read_seq == UNRESOLVED
    resolved = result.resolved({(C1, "alice"): 6, (C1, "bob"): 6})
    assert [e.last_read_seq for e in resolved if isinstance(e, ReadUpdated)] == [6]


def stored_as(temp: str, cid: uuid.UUID, *, seq: int, content: str) -> Stored:
    """A message of alice's already in the database under tempMessageId ``temp``."""
    return Stored(
        id=uuid.UUID(int=7),
        conversation_id=cid,
        seq=seq,
        sender_id="alice",
        temp_message_id=temp,
        content=content,
        sent_at=NOW,
    )


def test_a_resend_of_a_stored_message_announces_the_original():
    old = stored_as("t", C1, seq=3, content="first")
    result = run([send("alice", C1, "t", "changed")], existing={("alice", "t"): old})
    assert not result.new_messages and result.duplicates == 1
    (event,) = result.events
    assert isinstance(event, MessageStored) and (event.message_id, event.seq, event.content) == (old.id, 3, "first")


def test_a_temp_id_reused_in_another_conversation_is_refused_not_echoed():
    old = stored_as("t", C2, seq=1, content="to carol")
    result = run([send("alice", C1, "t", "to bob")], existing={("alice", "t"): old})
    assert summary(result.events) == [("rejected", "invalid_frame", "t")]
    assert not result.new_messages


def test_the_accept_time_travels_from_the_send_to_its_event():
    sent = SendMessage(
        user_id="alice", conversation_id=C1, temp_message_id="t", content="hi", origin=ORIGIN, accepted_at=1234.5
    )
    (event,) = run([sent]).events
    assert isinstance(event, MessageStored) and event.accepted_at == 1234.5
