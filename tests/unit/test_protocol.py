"""gateway/asyncapi.yaml against the code: every frame and body the code makes matches its schema,
and the schemas refuse what the code would never send."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from notifier.routing import plan
from shared import envelope, frames, topology
from shared.envelope import Origin

from ..factories import message_stored
from ..protocol import document, problems

CID = uuid.uuid4()
AT = datetime(2026, 11, 28, 8, 0, 0, 123000, tzinfo=timezone.utc)


def test_the_document_is_asyncapi_3_with_every_channel():
    doc = document()
    assert doc["asyncapi"].startswith("3.")
    assert set(doc["channels"]) == {"socket", "commands", "events", "typing", "typingEvents", "deliveries", "dead"}
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {topology.TYPING, topology.TYPING_EVENTS, topology.DEAD} <= addresses


@pytest.mark.parametrize(
    "frame",
    [
        {"action": "send-message", "tempMessageId": "t1", "conversationId": str(CID), "content": "hi"},
        {"action": "read-messages", "conversationId": str(CID)},
        {"action": "heartbeat"},
        {"action": "typing", "conversationId": str(CID)},
        {"action": "authenticate", "token": "abc.def.ghi"},
        {"action": "edit-message", "messageId": str(CID), "content": "fixed"},
        {"action": "delete-message", "messageId": str(CID)},
        {"action": "react", "messageId": str(CID), "emoji": "👍", "on": True},
        {"action": "react", "messageId": str(CID), "emoji": "👨‍👩‍👧", "on": False},  # joined by zero-width joiners
    ],
)
def test_every_client_frame_the_parser_accepts_matches_the_document(frame):
    frames.parse(json.dumps(frame))  # the parser takes it
    assert not problems("ClientFrame", frame)


SERVER_FRAMES = [
    frames.new_message(
        message_id=uuid.uuid4(),
        temp_message_id="t",
        conversation_id=CID,
        sender_id="alice",
        content="hi",
        sent_at=AT,
        seq=1,
        change=1,
    ),
    frames.message_updated(
        conversation_id=CID,
        message_id=uuid.uuid4(),
        seq=1,
        change=4,
        content="fixed",
        edited_at=AT,
        deleted=False,
        reactions=[{"emoji": "👍", "userIds": ["alice", "bob"]}],
    ),
    frames.message_updated(
        conversation_id=CID,
        message_id=uuid.uuid4(),
        seq=2,
        change=5,
        content="",
        edited_at=None,
        deleted=True,
        reactions=[],
    ),
    frames.read_messages(conversation_id=CID, user_id="bob", last_read_seq=3),
    frames.read_receipt(conversation_id=CID, user_id="bob", last_read_seq=3),
    frames.typing(conversation_id=CID, user_id="bob"),
    frames.conversation_created(conversation_id=CID, title=None, is_group=False, participant_ids=["a", "b"]),
    frames.error("rate_limited", "slow down", action="send-message", temp_message_id="t"),
    frames.error("invalid_frame", "frame refused"),
    frames.error("not_allowed", "not yours", action="edit-message", message_id=str(CID)),
]


@pytest.mark.parametrize("frame", SERVER_FRAMES)
def test_every_server_frame_the_code_renders_matches_the_document(frame):
    assert not problems("ServerFrame", frame)


def test_the_document_refuses_what_the_code_never_sends():
    assert problems("ServerFrame", {"type": "new-message"})
    assert problems("ServerFrame", {"type": "error", "code": "no_such_code", "message": "x"})
    assert problems("Commands", {"v": 1, "items": [{"type": "send-message"}]})


def test_broker_bodies_match_the_document():
    origin = Origin("gw-1", "conn-1")
    commands = envelope.Commands(
        items=[
            envelope.SendMessage(
                user_id="alice", conversation_id=CID, temp_message_id="t", content="hi", origin=origin, accepted_at=1.5
            ),
            envelope.ReadMessages(user_id="bob", conversation_id=CID, origin=origin),
            envelope.StartTyping(user_id="bob", conversation_id=CID, origin=origin),
            envelope.EditMessage(user_id="alice", message_id=CID, content="fixed", origin=origin),
            envelope.DeleteMessage(user_id="alice", message_id=CID, origin=origin, conversation_id=CID),
            envelope.React(user_id="bob", message_id=CID, emoji="🎉", on=True, origin=origin),
        ]
    )
    stored = message_stored(conversation_id=CID, sent_at=AT, accepted_at=1.5)
    events = envelope.Events(
        items=[
            stored,
            envelope.ReadUpdated(conversation_id=CID, user_id="bob", last_read_seq=1, participants=["alice", "bob"]),
            envelope.TypingStarted(conversation_id=CID, user_id="bob", participants=["alice", "bob"]),
            envelope.ConversationCreated(conversation_id=CID, title="t", is_group=True, participants=["a", "b", "c"]),
            envelope.MessageUpdated(
                conversation_id=CID,
                message_id=uuid.uuid4(),
                seq=1,
                change=2,
                content="fixed",
                edited_at=AT,
                deleted=False,
                reactions=[envelope.Reaction(emoji="🎉", user_ids=["bob"])],
                participants=["alice", "bob"],
            ),
            envelope.CommandRejected(
                origin=origin,
                code="not_a_participant",
                message="no",
                action="send-message",
                temp_message_id="t",
                conversation_id=CID,
            ),
        ]
    )
    deliveries = plan(list(events.items), {"alice": {"gw-1"}, "bob": {"gw-1"}}, trusted=True)["gw-1"]
    assert not problems("Commands", envelope.encode(commands))
    assert not problems("Events", envelope.encode(events))
    assert not problems("Deliveries", envelope.encode(envelope.Deliveries(items=deliveries)))
    for item in deliveries:
        assert not problems("ServerFrame", item.frame)


def test_the_readable_pages_cover_everything_the_document_defines():
    """docs/protocol.md (the frames) and docs/events.md (the broker) are the readable rendering of
    gateway/asyncapi.yaml: every frame type, action and event type it defines appears there."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    protocol, events = (docs / "protocol.md").read_text(), (docs / "events.md").read_text()
    schemas = document()["components"]["schemas"]

    def consts(schema: dict, field: str) -> set[str]:
        found = set()
        for option in schema.get("oneOf", []):
            target = schemas[option["$ref"].rsplit("/", 1)[1]] if "$ref" in option else option
            value = target["properties"][field]
            found |= {value["const"]} if "const" in value else set(value.get("enum", []))
        return found

    for action in consts(schemas["ClientFrame"], "action"):
        assert f"`{action}`" in protocol, action
    for kind in consts(schemas["ServerFrame"], "type"):
        assert f"`{kind}`" in protocol, kind
    for code in schemas["ErrorFrame"]["properties"]["code"]["enum"]:
        assert f"`{code}`" in protocol, code
    for body in ("Commands", "Events"):
        for kind in consts({"oneOf": schemas[body]["properties"]["items"]["items"]["oneOf"]}, "type"):
            assert f'"type": "{kind}"' in events or f"`{kind}`" in events, kind
