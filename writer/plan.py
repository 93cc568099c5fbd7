"""What a batch of commands does, decided without I/O: the writer's pure core.

:func:`plan` takes the commands in order, what the database said about their conversations
(each one's ``last_seq`` and members) and the messages already stored under the batch's
idempotency keys, and returns every decision: the rows to insert, each conversation's new
latest message, the read pointers to move, the events to announce and why any command was
refused. ``store.py`` reads the inputs and writes the outputs around it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from shared.envelope import (
    Command,
    CommandRejected,
    Event,
    MessageStored,
    ReadMessages,
    ReadUpdated,
    SendMessage,
    StartTyping,
    TypingStarted,
)
from shared.frames import MAX_CONTENT, MAX_TEMP_ID

UNRESOLVED = -1  # a ReadUpdated's pointer until the write returns it


@dataclass(frozen=True)
class Conversation:
    last_seq: int
    members: tuple[str, ...]
    read: Mapping[str, int] = field(default_factory=dict)  # each member's last_read_seq


@dataclass(frozen=True)
class Stored:
    """A message already in the database, found by its ``(sender_id, temp_message_id)``."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    sender_id: str
    temp_message_id: str
    content: str
    sent_at: datetime


@dataclass(frozen=True)
class Latest:
    seq: int
    message_id: uuid.UUID
    sent_at: datetime
    sender_id: str
    content: str


@dataclass
class Plan:
    events: list[Event] = field(default_factory=list)
    new_messages: list[Stored] = field(default_factory=list)
    latest: dict[uuid.UUID, Latest] = field(default_factory=dict)
    read_to: dict[tuple[uuid.UUID, str], int] = field(default_factory=dict)
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0

    @property
    def writes(self) -> bool:
        return bool(self.new_messages or self.read_to)

    def resolved(self, pointers: Mapping[tuple[uuid.UUID, str], int]) -> list[Event]:
        """The events, each ReadUpdated that moved a pointer given the pointer the write returned."""
        return [
            msgspec.structs.replace(e, last_read_seq=pointers[(e.conversation_id, e.user_id)])
            if isinstance(e, ReadUpdated) and e.last_read_seq == UNRESOLVED
            else e
            for e in self.events
        ]


def reject(cmd: Command, code: str, message: str) -> CommandRejected:
    return CommandRejected(
        origin=cmd.origin,
        code=code,
        message=message,
        action=str(cmd.__struct_config__.tag),  # the command's tag is its action, e.g. "send-message"
        temp_message_id=cmd.temp_message_id if isinstance(cmd, SendMessage) else None,
        conversation_id=cmd.conversation_id,
    )


def refusal(cmd: Command) -> tuple[str, str] | None:
    """The gateway validates frames; the writer does not trust its input either. (code, message)."""
    if isinstance(cmd, SendMessage):
        if not 1 <= len(cmd.temp_message_id) <= MAX_TEMP_ID:
            return "invalid_frame", f"tempMessageId must be a string of 1 to {MAX_TEMP_ID} characters"
        if not cmd.content.rstrip():
            return "empty_content", "content is empty"
        if len(cmd.content.rstrip()) > MAX_CONTENT:
            return "content_too_long", f"content is longer than {MAX_CONTENT} characters"
    return None


def plan(
    commands: list[Command],
    conversations: Mapping[uuid.UUID, Conversation],
    existing: Mapping[tuple[str, str], Stored],
    now: datetime,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> Plan:
    """Apply ``commands`` in order to the state read from the database; decide everything."""
    out = Plan()
    last_seq = {cid: c.last_seq for cid, c in conversations.items()}
    known = dict(existing)  # grows as the batch stores: a second copy in the batch is a duplicate

    for cmd in commands:
        cid = cmd.conversation_id
        conversation = conversations.get(cid)
        if conversation is None:
            out.events.append(reject(cmd, "unknown_conversation", "no such conversation"))
            out.rejected += 1
            continue
        members = list(conversation.members)
        if cmd.user_id not in conversation.members:
            out.events.append(reject(cmd, "not_a_participant", "you are not a participant of this conversation"))
            out.rejected += 1
            continue
        problem = refusal(cmd)
        if problem is not None:
            out.events.append(reject(cmd, *problem))
            out.rejected += 1
            continue
        if isinstance(cmd, SendMessage):
            before = known.get((cmd.user_id, cmd.temp_message_id))
            if before is not None and before.conversation_id != cid:
                out.events.append(
                    reject(cmd, "invalid_frame", "tempMessageId was already used in another conversation")
                )
                out.rejected += 1
                continue
            if before is not None:
                out.duplicates += 1
                out.events.append(_announce(before, members, cmd))
                continue
            seq = last_seq[cid] + 1
            last_seq[cid] = seq
            message = Stored(
                id=new_id(),
                conversation_id=cid,
                seq=seq,
                sender_id=cmd.user_id,
                temp_message_id=cmd.temp_message_id,
                content=cmd.content.rstrip(),
                sent_at=now,
            )
            known[(cmd.user_id, cmd.temp_message_id)] = message
            out.new_messages.append(message)
            out.latest[cid] = Latest(seq, message.id, now, cmd.user_id, message.content)
            out.read_to[(cid, cmd.user_id)] = max(out.read_to.get((cid, cmd.user_id), 0), seq)  # read own message
            out.events.append(_announce(message, members, cmd))
            out.stored += 1
        elif isinstance(cmd, ReadMessages):
            key = (cid, cmd.user_id)
            read = max(conversation.read.get(cmd.user_id, 0), out.read_to.get(key, 0))
            if last_seq[cid] <= read:
                # nothing new to read: no write and no receipt to the others, but the reader's
                # connections are still answered with where they stand (PageNow answered every read)
                out.events.append(
                    ReadUpdated(
                        conversation_id=cid, user_id=cmd.user_id, last_read_seq=read, participants=[cmd.user_id]
                    )
                )
                continue
            out.read_to[key] = last_seq[cid]
            out.events.append(
                ReadUpdated(conversation_id=cid, user_id=cmd.user_id, last_read_seq=UNRESOLVED, participants=members)
            )
        elif isinstance(cmd, StartTyping):
            out.events.append(TypingStarted(conversation_id=cid, user_id=cmd.user_id, participants=members))
    return out


def _announce(message: Stored, members: list[str], cmd: SendMessage) -> MessageStored:
    return MessageStored(
        message_id=message.id,
        conversation_id=message.conversation_id,
        seq=message.seq,
        sender_id=message.sender_id,
        temp_message_id=message.temp_message_id,
        content=message.content,
        sent_at=message.sent_at,
        participants=members,
        accepted_at=cmd.accepted_at,
        trace=cmd.trace,
    )
