"""The versioned envelope carried over RabbitMQ, and its typed payloads.

Every AMQP body is one JSON object ``{"v": 1, "items": [...]}``: a batch, because one
publish-with-confirm costs about as much as storing a hundred rows (docs/events.md). Items are
tagged by ``type``. Bodies are decoded once, at the consumer's edge, into these structs; a body
that does not decode is a poison message (:class:`EnvelopeError`) and goes to the dead-letter
queue rather than being retried.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, TypeVar, cast

import msgspec

VERSION: Literal[1] = 1


class EnvelopeError(ValueError):
    """The body is not a valid envelope of the expected kind."""


class Origin(msgspec.Struct, frozen=True):
    """The gateway instance and connection a command came from (for error replies)."""

    instance: str
    conn: str


# ---- commands: gateway -> writer (exchange chat.commands) --------------------------------------


class SendMessage(msgspec.Struct, tag="send-message", tag_field="type", frozen=True):
    user_id: str
    conversation_id: uuid.UUID
    temp_message_id: str
    content: str
    origin: Origin
    # when the gateway accepted the frame (wall clock, seconds since the epoch): it travels to
    # every delivery so the gateway that writes the frame can measure send-to-delivery latency
    accepted_at: float | None = None
    trace: str | None = None  # W3C traceparent of the gateway's span (shared/tracing.py), when tracing


class ReadMessages(msgspec.Struct, tag="read-messages", tag_field="type", frozen=True):
    user_id: str
    conversation_id: uuid.UUID
    origin: Origin


class StartTyping(msgspec.Struct, tag="typing", tag_field="type", frozen=True):
    user_id: str
    conversation_id: uuid.UUID
    origin: Origin


# Commands on one message: the gateway knows only the message's id, which it routes by (a message
# id carries its conversation's partition, shared/topology.py: message_partition). The writer finds
# the conversation; a command that reached another partition than its conversation's (a message of
# an earlier version, whose id is random) is sent on to the right one with ``conversation_id`` set.


class EditMessage(msgspec.Struct, tag="edit-message", tag_field="type", frozen=True):
    user_id: str
    message_id: uuid.UUID
    content: str
    origin: Origin
    conversation_id: uuid.UUID | None = None


class DeleteMessage(msgspec.Struct, tag="delete-message", tag_field="type", frozen=True):
    user_id: str
    message_id: uuid.UUID
    origin: Origin
    conversation_id: uuid.UUID | None = None


class React(msgspec.Struct, tag="react", tag_field="type", frozen=True):
    user_id: str
    message_id: uuid.UUID
    emoji: str
    on: bool
    origin: Origin
    conversation_id: uuid.UUID | None = None


MessageCommand = EditMessage | DeleteMessage | React
Command = SendMessage | ReadMessages | StartTyping | EditMessage | DeleteMessage | React


class Commands(msgspec.Struct, frozen=True):
    items: list[Command]
    v: Literal[1] = VERSION


# ---- events: writer/query -> notifier (exchange chat.events) -----------------------------------


class MessageStored(msgspec.Struct, tag="message-stored", tag_field="type", frozen=True):
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    sender_id: str
    temp_message_id: str
    content: str
    sent_at: datetime
    participants: list[str]
    accepted_at: float | None = None  # from the SendMessage that stored (or re-sent) it
    trace: str | None = None  # the writer's span, when tracing
    change: int = 0  # the conversation's change counter at this message (0 from writers before it)


class ReadUpdated(msgspec.Struct, tag="read-updated", tag_field="type", frozen=True):
    """A reader's pointer: the reader's connections get ``read-messages``, the other ``participants``
    a ``read-receipt``. A read that moved nothing names the reader alone: only the answer is owed."""

    conversation_id: uuid.UUID
    user_id: str
    last_read_seq: int
    participants: list[str]


class Reaction(msgspec.Struct, frozen=True, rename="camel"):
    """One emoji under a message and who chose it, in the order they did (``userIds`` in JSON)."""

    emoji: str
    user_ids: list[str]


class MessageUpdated(msgspec.Struct, tag="message-updated", tag_field="type", frozen=True):
    """A message's state after an edit, a delete or a reaction change, with the change's number."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    seq: int
    change: int
    content: str
    edited_at: datetime | None
    deleted: bool
    reactions: list[Reaction]
    participants: list[str]


class TypingStarted(msgspec.Struct, tag="typing-started", tag_field="type", frozen=True):
    conversation_id: uuid.UUID
    user_id: str
    participants: list[str]


class ConversationCreated(msgspec.Struct, tag="conversation-created", tag_field="type", frozen=True):
    conversation_id: uuid.UUID
    title: str | None
    is_group: bool
    participants: list[str]


class CommandRejected(msgspec.Struct, tag="command-rejected", tag_field="type", frozen=True):
    """A command the writer refused: goes back to the one connection that sent it."""

    origin: Origin
    code: str
    message: str
    action: str
    temp_message_id: str | None = None
    conversation_id: uuid.UUID | None = None
    message_id: uuid.UUID | None = None  # the frame's messageId, for the commands on one message


Event = MessageStored | MessageUpdated | ReadUpdated | TypingStarted | ConversationCreated | CommandRejected


class Events(msgspec.Struct, frozen=True):
    items: list[Event]
    v: Literal[1] = VERSION


# ---- deliveries: notifier -> one gateway instance (exchange chat.deliveries) -------------------


class Delivery(msgspec.Struct, frozen=True, array_like=True):
    """One rendered frame for the local connections of ``users`` (or just connection ``conn``)."""

    frame: str
    users: list[str]
    conn: str | None = None
    accepted_at: float | None = None  # a new-message frame's send time, for the latency metric
    trace: str | None = None  # the notifier's span, when tracing


class Deliveries(msgspec.Struct, frozen=True):
    items: list[Delivery]
    v: Literal[1] = VERSION


_encoder = msgspec.json.Encoder()
_decoders = {kind: msgspec.json.Decoder(kind) for kind in (Commands, Events, Deliveries)}
T = TypeVar("T", Commands, Events, Deliveries)


def encode(batch: Commands | Events | Deliveries) -> bytes:
    return _encoder.encode(batch)


def decode(kind: type[T], body: bytes) -> T:
    """Decode and validate ``body`` as ``kind``; raise EnvelopeError naming what is wrong."""
    try:
        return cast(T, _decoders[kind].decode(body))  # each decoder decodes exactly its kind
    except msgspec.ValidationError as exc:
        raise EnvelopeError(f"invalid {kind.__name__.lower()} envelope: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"undecodable {kind.__name__.lower()} envelope: {exc}") from None
