import uuid
from datetime import datetime, timezone

import pytest

from shared import envelope
from shared.envelope import (
    CommandRejected,
    Commands,
    ConversationCreated,
    Deliveries,
    Delivery,
    EnvelopeError,
    Events,
    Origin,
    ReadMessages,
    ReadUpdated,
    SendMessage,
    StartTyping,
    TypingStarted,
)

from ..factories import message_stored

CID = uuid.uuid4()
ORIGIN = Origin("gw-1", "c1")


def test_commands_round_trip():
    batch = Commands(
        items=[
            SendMessage(user_id="alice", conversation_id=CID, temp_message_id="t1", content="hi", origin=ORIGIN),
            ReadMessages(user_id="bob", conversation_id=CID, origin=ORIGIN),
            StartTyping(user_id="bob", conversation_id=CID, origin=ORIGIN),
        ]
    )
    assert envelope.decode(Commands, envelope.encode(batch)) == batch


def test_events_round_trip():
    at = datetime(2021, 12, 18, 7, 11, 47, 123000, tzinfo=timezone.utc)
    batch = Events(
        items=[
            message_stored(conversation_id=CID, seq=3, sent_at=at),
            ReadUpdated(conversation_id=CID, user_id="bob", last_read_seq=3, participants=["alice", "bob"]),
            TypingStarted(conversation_id=CID, user_id="bob", participants=["alice", "bob"]),
            ConversationCreated(conversation_id=CID, title=None, is_group=False, participants=["alice", "bob"]),
            CommandRejected(
                origin=ORIGIN,
                code="not_a_participant",
                message="no",
                action="send-message",
                temp_message_id="t",
                conversation_id=CID,
            ),
        ]
    )
    decoded = envelope.decode(Events, envelope.encode(batch))
    assert decoded == batch
    assert decoded.items[0].sent_at == at


def test_deliveries_round_trip():
    batch = Deliveries(items=[Delivery(frame='{"type":"typing"}', users=["a", "b"]), Delivery("{}", [], "conn")])
    assert envelope.decode(Deliveries, envelope.encode(batch)) == batch


def test_envelope_carries_its_version():
    assert b'"v":1' in envelope.encode(Commands(items=[]))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v":2,"items":[]}',
        b'{"items":[{"type":"send-message"}]}',
        b'{"v":1,"items":[{"type":"delete-everything","user_id":"a"}]}',
        b'{"v":1,"items":[{"type":"read-messages","user_id":"a","conversation_id":"not-a-uuid",'
        b'"origin":{"instance":"g","conn":"c"}}]}',
        b'{"v":1,"items":[{"type":"read-messages","user_id":5,"conversation_id":"' + str(CID).encode() + b'",'
        b'"origin":{"instance":"g","conn":"c"}}]}',
    ],
)
def test_bad_envelopes_are_rejected(body):
    with pytest.raises(EnvelopeError):
        envelope.decode(Commands, body)


def test_a_batch_of_one_kind_is_not_accepted_as_another():
    events = envelope.encode(Events(items=[TypingStarted(conversation_id=CID, user_id="a", participants=["a"])]))
    with pytest.raises(EnvelopeError):
        envelope.decode(Commands, events)
