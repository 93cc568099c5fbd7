"""The writer's pure core: what a batch stores, announces and refuses, from commands and state."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timezone

import pytest

from shared.envelope import (
    CommandRejected,
    DeleteMessage,
    EditMessage,
    MessageStored,
    MessageUpdated,
    Origin,
    React,
    Reaction,
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
    C1: Conversation(last_seq=4, members=("alice", "bob"), last_change=6),
    C2: Conversation(last_seq=0, members=("alice", "carol")),
}


def send(user: str, cid: uuid.UUID, temp: str, content: str = "hi") -> SendMessage:
    return SendMessage(user_id=user, conversation_id=cid, temp_message_id=temp, content=content, origin=ORIGIN)


def ids():
    counter = itertools.count(1000)
    return lambda cid: uuid.UUID(int=next(counter))


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


# ---- edits, deletes and reactions ------------------------------------------------------------

M4 = uuid.UUID(int=44)  # alice's message 4 of C1, the latest
M2 = uuid.UUID(int=42)  # bob's message 2 of C1


def message(mid: uuid.UUID, seq: int, sender: str, content: str, **kw) -> Stored:
    return Stored(
        id=mid,
        conversation_id=C1,
        seq=seq,
        sender_id=sender,
        temp_message_id=f"t{seq}",
        content=content,
        sent_at=NOW,
        change=seq,
        **kw,
    )


TARGETS = {M4: message(M4, 4, "alice", "draft"), M2: message(M2, 2, "bob", "older")}


def edit(user, mid, content):
    return EditMessage(user_id=user, message_id=mid, content=content, origin=ORIGIN)


def delete(user, mid):
    return DeleteMessage(user_id=user, message_id=mid, origin=ORIGIN)


def react(user, mid, emoji, on=True):
    return React(user_id=user, message_id=mid, emoji=emoji, on=on, origin=ORIGIN)


def changes(commands, targets=TARGETS):
    result = plan(commands, STATE, {}, NOW, new_id=ids(), targets=targets)
    out = []
    for e in result.events:
        if isinstance(e, MessageStored):
            out.append(("stored", e.seq, e.change))
        elif isinstance(e, MessageUpdated):
            out.append(("updated", e.seq, e.change, e.content, e.deleted, [(r.emoji, r.user_ids) for r in e.reactions]))
        elif isinstance(e, CommandRejected):
            out.append(("rejected", e.code, e.message_id))
    return result, out


def test_every_message_and_change_takes_the_next_change_in_order():
    result, out = changes(
        [
            edit("alice", M4, "final"),
            send("bob", C1, "b"),
            react("bob", M4, "👍"),
            react("alice", M4, "👍"),
            react("alice", M4, "🎉"),
            delete("bob", M2),
        ]
    )
    assert out == [
        ("updated", 4, 7, "final", False, []),
        ("stored", 5, 8),
        ("updated", 4, 9, "final", False, [("👍", ["bob"])]),
        ("updated", 4, 10, "final", False, [("👍", ["bob", "alice"])]),
        ("updated", 4, 11, "final", False, [("👍", ["bob", "alice"]), ("🎉", ["alice"])]),  # in the order first added
        ("updated", 2, 12, "", True, []),
    ]
    assert result.last_change == {C1: 12} and result.changed == 5 and result.stored == 1
    # the rows to write: each changed message as it ends, once
    assert {m.seq: (m.content, m.deleted, m.change) for m in result.updated.values()} == {
        4: ("final", False, 11),
        2: ("", True, 12),
    }
    assert result.updated[M4].edited_at == NOW and result.updated[M2].edited_at is None  # only edits set it


def test_what_changes_nothing_takes_no_number_and_announces_nothing():
    reacted = {**TARGETS, M4: message(M4, 4, "alice", "draft", reactions=(Reaction(emoji="👍", user_ids=["bob"]),))}
    deleted = {**TARGETS, M2: message(M2, 2, "bob", "", deleted=True)}
    for commands, targets in (
        ([edit("alice", M4, "draft   ")], TARGETS),  # the same text, once trimmed
        ([react("bob", M4, "👍")], reacted),  # already so
        ([react("alice", M4, "👍", on=False)], reacted),  # alice never reacted
        ([react("alice", M4, "🎉", on=False)], TARGETS),
        ([delete("bob", M2)], deleted),  # deleting a deleted message
    ):
        result, out = changes(commands, targets)
        assert out == [] and not result.writes and result.last_change == {}, commands


def test_who_may_change_what():
    _, out = changes(
        [
            edit("bob", M4, "mine now"),  # another's message
            delete("bob", M4),
            edit("carol", M4, "hi"),  # not a participant: as if no such message
            react("carol", M4, "👍"),
            edit("alice", uuid.UUID(int=404), "hi"),  # no such message
        ]
    )
    assert out == [
        ("rejected", "not_allowed", M4),
        ("rejected", "not_allowed", M4),
        ("rejected", "unknown_message", M4),
        ("rejected", "unknown_message", M4),
        ("rejected", "unknown_message", uuid.UUID(int=404)),
    ]
    # a deleted message is neither edited nor reacted to
    _, out = changes([delete("bob", M2), edit("bob", M2, "back"), react("alice", M2, "👍")])
    assert [o[:2] for o in out] == [("updated", 2), ("rejected", "unknown_message"), ("rejected", "unknown_message")]
    # a command whose conversation was named by the writer that sent it on must be that message's
    elsewhere_named = EditMessage(user_id="alice", message_id=M4, content="x", origin=ORIGIN, conversation_id=C2)
    assert changes([elsewhere_named])[1] == [("rejected", "unknown_message", M4)]


def test_at_most_fifty_different_reactions_on_a_message():
    fifty = tuple(Reaction(emoji=f"e{i}", user_ids=["bob"]) for i in range(50))
    targets = {**TARGETS, M4: message(M4, 4, "alice", "draft", reactions=fifty)}
    _, out = changes([react("alice", M4, "e51"), react("alice", M4, "e7")], targets)
    assert out[0] == ("rejected", "not_allowed", M4)
    assert out[1][0] == "updated" and ("e7", ["bob", "alice"]) in out[1][5]  # an existing one still takes more people


def test_the_conversation_list_follows_an_edit_or_a_delete_of_the_latest_message():
    result, _ = changes([edit("alice", M4, "final")])
    assert result.latest_content == {C1: "final"}
    result, _ = changes([delete("alice", M4)])
    assert result.latest_content == {C1: ""}
    result, _ = changes([edit("bob", M2, "not the latest")])
    assert result.latest_content == {}
    result, _ = changes([edit("alice", M4, "final"), send("bob", C1, "b", "newer")])  # a newer one is the latest
    assert result.latest_content == {} and result.latest[C1].content == "newer"


def test_commands_on_messages_of_another_partition_go_on_to_it():
    from shared.topology import message_partition, new_message_id, partition
    from writer.plan import elsewhere

    P = 8
    here = [c for c in (uuid.uuid4() for _ in range(100)) if partition(c, P) == 3][0]
    ours = new_message_id(here)  # made now: routed by its id to its conversation's partition
    assert message_partition(ours, P) == partition(here, P) == 3
    legacy = next(m for m in (uuid.uuid4() for _ in range(100)) if message_partition(m, P) != 3)  # a random id
    named = {
        ours: Stored(
            id=ours, conversation_id=here, seq=1, sender_id="a", temp_message_id="1", content="x", sent_at=NOW
        ),
        legacy: Stored(
            id=legacy, conversation_id=here, seq=2, sender_id="a", temp_message_id="2", content="y", sent_at=NOW
        ),
    }
    commands = [edit("a", ours, "x2"), edit("a", legacy, "y2"), send("a", here, "t"), edit("a", uuid.uuid4(), "?")]
    stay, onward = elsewhere(commands, named, P)
    assert stay == [commands[0], commands[2], commands[3]]  # an unknown id stays, to be refused here
    assert [(c.message_id, c.conversation_id) for c in onward] == [(legacy, here)]
    assert elsewhere(onward, named, P) == (onward, [])  # named, it is never sent on again
