"""Storing a batch of commands in one transaction: the SQL lives next to the code that runs it.

A batch comes from one partition queue, so no other writer touches its conversations at the
same time; the conversations' rows are still locked (in id order) so ``seq`` stays gapless
whatever runs concurrently. Redelivery is normal: a send whose ``(sender, tempMessageId)`` is
already stored stores nothing and re-announces the original message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import asyncpg

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


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


def _columns(rows: list[tuple], width: int) -> list[list]:  # type: ignore[type-arg]
    """Rows to the column arrays that unnest() takes."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


def _now_ms() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _reject(cmd: Command, code: str, message: str) -> CommandRejected:
    return CommandRejected(
        origin=cmd.origin,
        code=code,
        message=message,
        action=cmd.__struct_config__.tag,  # type: ignore[attr-defined]
        temp_message_id=cmd.temp_message_id if isinstance(cmd, SendMessage) else None,
        conversation_id=cmd.conversation_id,
    )


def _invalid(cmd: Command) -> str | None:
    """The gateway validates frames; the writer does not trust its input either."""
    if isinstance(cmd, SendMessage):
        if not 1 <= len(cmd.temp_message_id) <= MAX_TEMP_ID:
            return "tempMessageId has a bad length"
        if not cmd.content.rstrip():
            return "empty_content"
        if len(cmd.content) > MAX_CONTENT:
            return "content_too_long"
    return None


# Lock the batch's conversations (in id order, so concurrent writers cannot deadlock) and read
# their counters and members in the same round trip.
LOCK_CONVERSATIONS = """
SELECT c.id, c.last_seq,
       ARRAY(SELECT p.user_id FROM participants p WHERE p.conversation_id = c.id ORDER BY p.user_id) AS members
FROM conversations c WHERE c.id = ANY($1::uuid[]) ORDER BY c.id FOR UPDATE OF c
"""

EXISTING = """
SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.temp_message_id, m.content, m.sent_at
FROM messages m
JOIN unnest($1::text[], $2::text[]) AS k(sender_id, temp_message_id)
  ON m.sender_id = k.sender_id AND m.temp_message_id = k.temp_message_id
"""

# One statement writes everything: the new messages, each conversation's latest-message fields,
# and the read pointers (a sender has read their own message; read-messages reads to the end).
WRITE = """
WITH new_messages AS (
    INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content, sent_at)
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
), latest AS (
    UPDATE conversations c
    SET last_seq = v.seq, last_message_id = v.id, last_sent_at = v.sent_at, last_sender_id = v.sender_id,
        last_content = v.content
    FROM unnest($8::uuid[], $9::bigint[], $10::uuid[], $11::timestamptz[], $12::text[], $13::text[])
         AS v(conversation_id, seq, id, sent_at, sender_id, content)
    WHERE c.id = v.conversation_id
)
UPDATE participants p
SET last_read_seq = GREATEST(p.last_read_seq, v.seq)
FROM unnest($14::uuid[], $15::text[], $16::bigint[]) AS v(conversation_id, user_id, seq)
WHERE p.conversation_id = v.conversation_id AND p.user_id = v.user_id
RETURNING p.conversation_id, p.user_id, p.last_read_seq
"""

# Every participant's copy of the conversation's latest-message time (the list's index).
TOUCH_PARTICIPANTS = """
UPDATE participants p SET last_sent_at = v.sent_at
FROM unnest($1::uuid[], $2::timestamptz[]) AS v(conversation_id, sent_at)
WHERE p.conversation_id = v.conversation_id
"""


async def store(conn: asyncpg.Connection, commands: list[Command]) -> Outcome:
    """Apply ``commands`` in order inside the caller's transaction; return the events to announce."""
    out = Outcome()
    conversation_ids = sorted({c.conversation_id for c in commands})
    locked = await conn.fetch(LOCK_CONVERSATIONS, conversation_ids)
    last_seq: dict[uuid.UUID, int] = {r["id"]: r["last_seq"] for r in locked}
    members: dict[uuid.UUID, list[str]] = {r["id"]: list(r["members"]) for r in locked}

    sends = [c for c in commands if isinstance(c, SendMessage)]
    existing: dict[tuple[str, str], asyncpg.Record] = {}
    if sends:
        rows = await conn.fetch(EXISTING, [c.user_id for c in sends], [c.temp_message_id for c in sends])
        existing = {(r["sender_id"], r["temp_message_id"]): r for r in rows}

    sent_at = _now_ms()
    new_rows: list[tuple[uuid.UUID, int, uuid.UUID, str, str, str, datetime]] = []
    latest: dict[uuid.UUID, tuple[int, uuid.UUID, datetime, str, str]] = {}
    read_targets: dict[tuple[uuid.UUID, str], int] = {}

    for cmd in commands:
        conversation = cmd.conversation_id
        if conversation not in last_seq:
            out.events.append(_reject(cmd, "unknown_conversation", "no such conversation"))
            out.rejected += 1
            continue
        participants = members.get(conversation, [])
        if cmd.user_id not in participants:
            out.events.append(_reject(cmd, "not_a_participant", "you are not a participant of this conversation"))
            out.rejected += 1
            continue
        problem = _invalid(cmd)
        if problem is not None:
            code = problem if problem in ("empty_content", "content_too_long") else "invalid_frame"
            out.events.append(_reject(cmd, code, problem))
            out.rejected += 1
            continue
        if isinstance(cmd, SendMessage):
            key = (cmd.user_id, cmd.temp_message_id)
            if key in existing:
                row = existing[key]
                out.duplicates += 1
                out.events.append(MessageStored(
                    message_id=row["id"], conversation_id=row["conversation_id"], seq=row["seq"],
                    sender_id=row["sender_id"], temp_message_id=row["temp_message_id"], content=row["content"],
                    sent_at=row["sent_at"], participants=members.get(row["conversation_id"], participants),
                ))
                continue
            seq = last_seq[conversation] + 1
            last_seq[conversation] = seq
            message_id = uuid.uuid4()
            content = cmd.content.rstrip()
            new_rows.append((conversation, seq, message_id, cmd.user_id, cmd.temp_message_id, content, sent_at))
            latest[conversation] = (seq, message_id, sent_at, cmd.user_id, content)
            read_targets[(conversation, cmd.user_id)] = seq  # the sender has read their own message
            stored = MessageStored(
                message_id=message_id, conversation_id=conversation, seq=seq, sender_id=cmd.user_id,
                temp_message_id=cmd.temp_message_id, content=content, sent_at=sent_at, participants=participants,
            )
            existing[key] = {  # a second copy in this same batch is a duplicate of this one
                "id": message_id, "conversation_id": conversation, "seq": seq, "sender_id": cmd.user_id,
                "temp_message_id": cmd.temp_message_id, "content": content, "sent_at": sent_at,
            }  # type: ignore[assignment]
            out.events.append(stored)
            out.stored += 1
        elif isinstance(cmd, ReadMessages):
            key2 = (conversation, cmd.user_id)
            read_targets[key2] = max(read_targets.get(key2, 0), last_seq[conversation])
            out.events.append(ReadUpdated(conversation_id=conversation, user_id=cmd.user_id, last_read_seq=-1,
                                          participants=participants))
        elif isinstance(cmd, StartTyping):
            out.events.append(TypingStarted(conversation_id=conversation, user_id=cmd.user_id,
                                            participants=participants))

    if new_rows or read_targets:
        keys = list(read_targets)
        rows = await conn.fetch(
            WRITE,
            *_columns(new_rows, 7),
            list(latest), *_columns(list(latest.values()), 5),
            [k[0] for k in keys], [k[1] for k in keys], [read_targets[k] for k in keys],
        )
        pointers = {(r["conversation_id"], r["user_id"]): r["last_read_seq"] for r in rows}
        if latest:
            await conn.execute(TOUCH_PARTICIPANTS, list(latest), [v[2] for v in latest.values()])
        out.events = [
            ReadUpdated(conversation_id=e.conversation_id, user_id=e.user_id,
                        last_read_seq=pointers[(e.conversation_id, e.user_id)], participants=e.participants)
            if isinstance(e, ReadUpdated) else e
            for e in out.events
        ]
    return out
