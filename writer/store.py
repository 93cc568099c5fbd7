"""Storing a batch of commands in one transaction: the SQL round trips around ``plan.py``.

A batch comes from one partition queue, so no other writer touches its conversations at the
same time; the conversations' rows are still locked (in id order) so ``seq`` stays gapless
whatever runs concurrently. Redelivery is normal: a send whose ``(sender, tempMessageId)`` is
already stored stores nothing and re-announces the original message.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from shared.db import Conn
from shared.envelope import Command, Event, SendMessage

from .plan import Conversation, Plan, Stored, plan


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to the column arrays that unnest() takes."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


def _now_ms() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# Lock the batch's conversations (in id order, so concurrent writers cannot deadlock) and read
# their counters and members in the same round trip.
LOCK_CONVERSATIONS = """
SELECT c.id, c.last_seq,
       ARRAY(SELECT p.user_id FROM participants p WHERE p.conversation_id = c.id ORDER BY p.user_id) AS members,
       ARRAY(SELECT p.last_read_seq FROM participants p WHERE p.conversation_id = c.id ORDER BY p.user_id) AS read_seqs
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


async def store(conn: Conn, commands: list[Command]) -> tuple[Plan, list[Event]]:
    """Apply ``commands`` in order inside the caller's transaction: the plan, and the events to announce."""
    locked = await conn.fetch(LOCK_CONVERSATIONS, sorted({c.conversation_id for c in commands}))
    conversations = {
        r["id"]: Conversation(r["last_seq"], tuple(r["members"]), dict(zip(r["members"], r["read_seqs"])))
        for r in locked
    }
    sends = [c for c in commands if isinstance(c, SendMessage)]
    existing: dict[tuple[str, str], Stored] = {}
    if sends:
        rows = await conn.fetch(EXISTING, [c.user_id for c in sends], [c.temp_message_id for c in sends])
        existing = {(r["sender_id"], r["temp_message_id"]): Stored(**dict(r)) for r in rows}

    decided = plan(commands, conversations, existing, _now_ms())
    if not decided.writes:
        return decided, decided.events
    new_rows = [
        (m.conversation_id, m.seq, m.id, m.sender_id, m.temp_message_id, m.content, m.sent_at)
        for m in decided.new_messages
    ]
    latest = [(v.seq, v.message_id, v.sent_at, v.sender_id, v.content) for v in decided.latest.values()]
    keys = list(decided.read_to)
    rows = await conn.fetch(
        WRITE,
        *_columns(new_rows, 7),
        list(decided.latest),
        *_columns(latest, 5),
        [k[0] for k in keys],
        [k[1] for k in keys],
        [decided.read_to[k] for k in keys],
    )
    if decided.latest:
        await conn.execute(TOUCH_PARTICIPANTS, list(decided.latest), [v.sent_at for v in decided.latest.values()])
    return decided, decided.resolved({(r["conversation_id"], r["user_id"]): r["last_read_seq"] for r in rows})
