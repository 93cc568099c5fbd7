"""Storing a batch of commands atomically: the SQL round trips around ``plan.py``.

A batch comes from partition queues one writer holds, so normally no other writer touches its
conversations: the fast path reads and writes in two round trips without locks, and unique keys
catch the rare exception (a hand-over between writers, a redelivery), which is then stored again
with the conversations locked, so ``seq`` stays gapless whatever runs concurrently. Redelivery is
normal: a send whose ``(sender, tempMessageId)`` is already stored stores nothing and
re-announces the original message.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import asyncpg
import prometheus_client

from shared.db import Conn
from shared.envelope import Command, Event, SendMessage

from .plan import Conversation, Plan, Stored, plan

LOCKED = prometheus_client.Counter(
    "chat_writer_locked_batches_total",
    "Batches stored again with their conversations locked, after a unique key refused the fast path",
)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to the column arrays that unnest() takes."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


def _now_ms() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# Each conversation's counter, members and their read pointers, in one round trip. The fast path
# reads without a lock; the careful path locks the rows (in id order, so concurrent writers cannot
# deadlock).
READ_CONVERSATIONS = """
SELECT c.id, c.last_seq, m.members, m.read_seqs
FROM conversations c
CROSS JOIN LATERAL (
    SELECT array_agg(p.user_id ORDER BY p.user_id) AS members,
           array_agg(p.last_read_seq ORDER BY p.user_id) AS read_seqs
    FROM participants p WHERE p.conversation_id = c.id
) m
WHERE c.id = ANY($1::uuid[])
"""
LOCK_CONVERSATIONS = READ_CONVERSATIONS + "ORDER BY c.id FOR UPDATE OF c\n"

EXISTING = """
SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.temp_message_id, m.content, m.sent_at
FROM messages m
JOIN unnest($1::text[], $2::text[]) AS k(sender_id, temp_message_id)
  ON m.sender_id = k.sender_id AND m.temp_message_id = k.temp_message_id
"""

# One statement writes everything: the new messages, each conversation's latest-message fields,
# and in one pass over the participant rows both every member's copy of the latest-message time
# (the conversation list's index) and the read pointers (a sender has read their own message;
# read-messages reads to the end). It returns the read pointers it moved.
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
    WHERE c.id = v.conversation_id AND c.last_seq < v.seq
), touched AS (
    SELECT * FROM unnest($8::uuid[], $11::timestamptz[]) AS t(conversation_id, sent_at)
), reads AS (
    SELECT * FROM unnest($14::uuid[], $15::text[], $16::bigint[]) AS r(conversation_id, user_id, seq)
), targets AS (
    SELECT q.conversation_id, q.user_id, t.sent_at, r.seq
    FROM participants q
    LEFT JOIN touched t ON t.conversation_id = q.conversation_id
    LEFT JOIN reads r ON r.conversation_id = q.conversation_id AND r.user_id = q.user_id
    WHERE q.conversation_id IN (SELECT conversation_id FROM touched UNION ALL SELECT conversation_id FROM reads)
      AND (t.sent_at IS NOT NULL OR r.seq IS NOT NULL)
), moved AS (
    UPDATE participants p
    SET last_sent_at = COALESCE(x.sent_at, p.last_sent_at),
        last_read_seq = GREATEST(p.last_read_seq, x.seq)
    FROM targets x
    WHERE p.conversation_id = x.conversation_id AND p.user_id = x.user_id
    RETURNING p.conversation_id, p.user_id, p.last_read_seq, x.seq IS NOT NULL AS read
)
SELECT conversation_id, user_id, last_read_seq FROM moved WHERE read
"""


def _conversations(rows: list[Any]) -> dict[Any, Conversation]:
    return {
        r["id"]: Conversation(
            r["last_seq"], tuple(r["members"] or ()), dict(zip(r["members"] or (), r["read_seqs"] or ()))
        )
        for r in rows
    }


async def conversations(conn: Conn, ids: list[Any]) -> dict[Any, Conversation]:
    """Each conversation's counter, members and read pointers, read without a lock (the fast path; typing)."""
    return _conversations(await conn.fetch(READ_CONVERSATIONS, sorted(set(ids))))


async def _write(conn: Conn, decided: Plan) -> list[Event]:
    if not decided.writes:
        return decided.events
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
    return decided.resolved({(r["conversation_id"], r["user_id"]): r["last_read_seq"] for r in rows})


async def store(conn: Conn, commands: list[Command]) -> tuple[Plan, list[Event]]:
    """Apply ``commands`` in order: the plan, and the events to announce once this returns.

    The fast path is two round trips and no explicit transaction: read the conversations, plan as
    if no send were stored yet, write everything in one statement (atomic on its own). Two
    unique keys make it safe: ``(conversation_id, seq)`` refuses a seq another writer took
    meanwhile, ``(sender_id, tempMessageId)`` a send stored before (a redelivery). Either
    refusal rolls the statement back whole, and the batch is stored again the careful way: in a
    transaction, the conversations locked, the stored sends read first.
    """
    decided = plan(commands, await conversations(conn, [c.conversation_id for c in commands]), {}, _now_ms())
    try:
        return decided, await _write(conn, decided)
    except asyncpg.UniqueViolationError:
        LOCKED.inc()
    async with conn.transaction():
        return await _store_locked(conn, commands)


async def _store_locked(conn: Conn, commands: list[Command]) -> tuple[Plan, list[Event]]:
    conversations = _conversations(await conn.fetch(LOCK_CONVERSATIONS, sorted({c.conversation_id for c in commands})))
    sends = [c for c in commands if isinstance(c, SendMessage)]
    existing: dict[tuple[str, str], Stored] = {}
    if sends:
        rows = await conn.fetch(EXISTING, [c.user_id for c in sends], [c.temp_message_id for c in sends])
        existing = {(r["sender_id"], r["temp_message_id"]): Stored(**dict(r)) for r in rows}
    decided = plan(commands, conversations, existing, _now_ms())
    return decided, await _write(conn, decided)
