import json
import uuid
from datetime import datetime, timezone

from notifier.routing import BROADCAST, plan, touched, users_of
from shared.envelope import (
    CommandRejected,
    ConversationCreated,
    Origin,
    ReadUpdated,
    TypingStarted,
)
from shared.registry import REFRESH_SECONDS, TRUST_SECONDS, registry_trusted

from ..factories import message_stored

CID = uuid.uuid4()
AT = datetime(2022, 1, 1, tzinfo=timezone.utc)


def stored(seq=1, participants=("alice", "bob", "carol")):
    return message_stored(conversation_id=CID, seq=seq, sent_at=AT, participants=list(participants))


def decode(deliveries):
    return [(json.loads(d.frame)["type"], sorted(d.users), d.conn) for d in deliveries]


def test_message_goes_to_every_instance_holding_a_participant_sender_included():
    located = {"alice": {"gw1"}, "bob": {"gw1", "gw2"}}  # carol is offline
    out = plan([stored()], located, trusted=True)
    assert decode(out["gw1"]) == [("new-message", ["alice", "bob"], None)]
    assert decode(out["gw2"]) == [("new-message", ["bob"], None)]
    assert set(out) == {"gw1", "gw2"}


def test_one_delivery_per_instance_keeps_event_order():
    located = {"alice": {"gw1"}, "bob": {"gw1"}}
    out = plan([stored(1), stored(2), stored(3)], located, trusted=True)
    assert [json.loads(d.frame)["seq"] for d in out["gw1"]] == [1, 2, 3]


def test_read_goes_to_reader_and_receipt_to_the_others():
    event = ReadUpdated(conversation_id=CID, user_id="bob", last_read_seq=4, participants=["alice", "bob"])
    out = plan([event], {"alice": {"gw1"}, "bob": {"gw2"}}, trusted=True)
    assert decode(out["gw2"]) == [("read-messages", ["bob"], None)]
    assert decode(out["gw1"]) == [("read-receipt", ["alice"], None)]


def test_typing_skips_the_typist():
    event = TypingStarted(conversation_id=CID, user_id="bob", participants=["alice", "bob"])
    out = plan([event], {"alice": {"gw1"}, "bob": {"gw1"}}, trusted=True)
    assert decode(out["gw1"]) == [("typing", ["alice"], None)]


def test_conversation_created_goes_to_every_participant():
    event = ConversationCreated(conversation_id=CID, title="t", is_group=True, participants=["a", "b", "c"])
    out = plan([event], {"a": {"gw1"}, "c": {"gw2"}}, trusted=True)
    assert decode(out["gw1"]) == [("conversation-created", ["a"], None)]
    assert decode(out["gw2"]) == [("conversation-created", ["c"], None)]


def test_rejection_goes_to_the_one_connection_that_sent_it():
    event = CommandRejected(
        origin=Origin("gw9", "conn-1"),
        code="not_a_participant",
        message="no",
        action="send-message",
        temp_message_id="t1",
        conversation_id=CID,
    )
    out = plan([event], {}, trusted=True)
    assert decode(out["gw9"]) == [("error", [], "conn-1")]
    assert json.loads(out["gw9"][0].frame)["tempMessageId"] == "t1"


def test_untrusted_registry_broadcasts_instead_of_dropping():
    out = plan([stored()], {}, trusted=False)
    assert decode(out[BROADCAST]) == [("new-message", ["alice", "bob", "carol"], None)]


def test_offline_recipients_produce_nothing():
    assert plan([stored()], {}, trusted=True) == {}


def test_users_of_lists_each_recipient_once():
    events = [
        stored(1),
        ReadUpdated(conversation_id=CID, user_id="dave", last_read_seq=1, participants=["alice", "dave"]),
    ]
    assert users_of(events) == ["alice", "bob", "carol", "dave"]


def test_the_users_whose_reads_change_are_the_ones_marked_fresh():
    from shared.envelope import CommandRejected, ConversationCreated, Origin, TypingStarted

    other = uuid.uuid4()
    events = [
        ReadUpdated(conversation_id=CID, user_id="dave", last_read_seq=1, participants=["alice", "dave"]),
        TypingStarted(conversation_id=CID, user_id="erin", participants=["erin", "frank"]),
        CommandRejected(origin=Origin("gw", "c"), code="rate_limited", message="slow down", action="send-message"),
        stored(1),
        ConversationCreated(conversation_id=other, title=None, is_group=False, participants=["gina", "alice"]),
    ]
    # a read moves only the reader's view; typing and refusals change nobody's reads
    assert touched(events) == ["dave", "alice", "bob", "carol", "gina"]


def test_registry_is_trusted_only_after_every_gateway_had_time_to_register_again():
    assert not registry_trusted(None, 10**12)
    assert not registry_trusted(10**12, 10**12 + (REFRESH_SECONDS + 4) * 1000)
    assert registry_trusted(10**12, 10**12 + TRUST_SECONDS * 1000)


def test_a_new_message_delivery_carries_its_send_time_and_nothing_else_does():
    import msgspec

    event = msgspec.structs.replace(stored(), accepted_at=99.5)
    deliveries = plan([event], {"alice": {"gw-1"}, "bob": {"gw-2"}}, trusted=True)
    assert {d.accepted_at for items in deliveries.values() for d in items} == {99.5}
    untrusted = plan([event], {}, trusted=False)
    assert untrusted[BROADCAST][0].accepted_at == 99.5
    assert all(d.accepted_at is None for items in plan([stored()], {"alice": {"g"}}, True).values() for d in items)
