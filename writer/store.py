"""Storing a batch of commands atomically: the SQL round trips around ``plan.py``.

A batch comes from partition queues one writer holds, so normally no other writer touches its
conversations: the fast path writes in one statement without a transaction, after reading only the
conversations this writer does not remember from its last batches (writer/known.py) and the
messages the batch's edits, deletes and reactions name. The statement writes only if each
conversation is still at the ``last_change`` the plan started from, and unique keys catch the rest
(a hand-over between writers, a redelivery); such a batch is stored again with the conversations
locked, so ``seq`` and ``change`` stay gapless whatever runs concurrently. Redelivery is normal: a
send whose ``(sender, tempMessageId)`` is already stored stores nothing and re-announces the
original message, and a change already made changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import asyncpg
import msgspec
import prometheus_client

from shared.db import Conn
from shared.envelope import Command, Event, MessageCommand, Reaction, SendMessage

from .known import Known
from .plan import Conversation, Plan, Stored, plan

LOCKED = prometheus_client.Counter(
    "chat_writer_locked_batches_total",
    "Batches stored again with their conversations locked, after a unique key or a moved last_change refused the fast path",
)
_reactions = msgspec.json.Decoder(list[Reaction])


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to the column arrays that unnest() takes."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


def _now_ms() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# Each conversation's counters, members and their read pointers, in one round trip. The fast path
# reads without a lock; the careful path locks the rows (in id order, so concurrent writers cannot
# deadlock).
READ_CONVERSATIONS = """
SELECT c.id, c.last_seq, c.last_change, m.members, m.read_seqs
FROM conversations c
CROSS JOIN LATERAL (
    SELECT array_agg(p.user_id ORDER BY p.user_id) AS members,
           array_agg(p.last_read_seq ORDER BY p.user_id) AS read_seqs
    FROM participants p WHERE p.conversation_id = c.id
) m
WHERE c.id = ANY($1::uuid[])
"""
LOCK_CONVERSATIONS = READ_CONVERSATIONS + "ORDER BY c.id FOR UPDATE OF c\n"

_MESSAGE = """m.id, m.conversation_id, m.seq, m.sender_id, m.temp_message_id, m.content, m.sent_at, m.change,
       m.edited_at, m.deleted, m.reactions::text AS reactions"""

EXISTING = f"""
SELECT {_MESSAGE}
FROM messages m
JOIN unnest($1::text[], $2::text[]) AS k(sender_id, temp_message_id)
  ON m.sender_id = k.sender_id AND m.temp_message_id = k.temp_message_id
"""

# The messages an edit, a delete or a reaction names: they tell which conversation it is about.
TARGETS = f"SELECT {_MESSAGE} FROM messages m WHERE m.id = ANY($1::uuid[])"

# One statement writes everything: the new messages; the messages changed (edited, deleted,
# reacted to); each changed conversation's counters and latest-message fields (from its last new
# message, or the latest message's new text when that was edited or deleted); in one pass over
# the participant rows both every member's copy of the latest-message time (the conversation
# list's index) and the read pointers (a sender has read their own message; read-messages reads to
# the end). First it locks the conversations it writes to, in id order as the careful path does (so
# two writers never deadlock), and it writes only if each still has the ``last_change`` the plan
# started from (else nothing, and one row of NULLs says so): checked against the row as it is once
# locked, not as a snapshot saw it. It returns the read pointers it moved.
WRITE = """
WITH locked AS (
    SELECT c.id, c.last_change FROM conversations c WHERE c.id = ANY($9::uuid[]) ORDER BY c.id FOR NO KEY UPDATE
), stale AS (
    SELECT 1 FROM locked c
    JOIN unnest($9::uuid[], $10::bigint[]) AS e(conversation_id, last_change) ON c.id = e.conversation_id
    WHERE c.last_change <> e.last_change
    LIMIT 1
), new_messages AS (
    INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content, sent_at, change)
    SELECT * FROM unnest(
        $1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::bigint[]
    )
    WHERE NOT EXISTS (SELECT 1 FROM stale)
    RETURNING conversation_id, seq, id, sender_id, content, sent_at
), changed AS (
    UPDATE messages m
    SET content = u.content, edited_at = u.edited_at, deleted = u.deleted, reactions = u.reactions::jsonb,
        change = u.change
    FROM unnest($17::uuid[], $18::bigint[], $19::text[], $20::timestamptz[], $21::boolean[], $22::text[], $23::bigint[])
        AS u(conversation_id, seq, content, edited_at, deleted, reactions, change)
    WHERE m.conversation_id = u.conversation_id AND m.seq = u.seq AND NOT EXISTS (SELECT 1 FROM stale)
), last AS (
    SELECT DISTINCT ON (conversation_id) * FROM new_messages ORDER BY conversation_id, seq DESC
), counters AS (
    SELECT * FROM unnest($11::uuid[], $12::bigint[], $13::text[]) AS k(conversation_id, last_change, latest_content)
    WHERE NOT EXISTS (SELECT 1 FROM stale)
), latest AS (
    UPDATE conversations c
    SET last_change = k.last_change,
        last_seq = COALESCE(v.seq, c.last_seq),
        last_message_id = COALESCE(v.id, c.last_message_id),
        last_sent_at = COALESCE(v.sent_at, c.last_sent_at),
        last_sender_id = COALESCE(v.sender_id, c.last_sender_id),
        last_content = COALESCE(v.content, k.latest_content, c.last_content)
    FROM counters k LEFT JOIN last v ON v.conversation_id = k.conversation_id
    WHERE c.id = k.conversation_id
), reads AS (
    SELECT * FROM unnest($14::uuid[], $15::text[], $16::bigint[]) AS r(conversation_id, user_id, seq)
    WHERE NOT EXISTS (SELECT 1 FROM stale)
), targets AS (
    SELECT q.conversation_id, q.user_id, t.sent_at, r.seq
    FROM participants q
    LEFT JOIN last t ON t.conversation_id = q.conversation_id
    LEFT JOIN reads r ON r.conversation_id = q.conversation_id AND r.user_id = q.user_id
    WHERE q.conversation_id IN (SELECT conversation_id FROM last UNION ALL SELECT conversation_id FROM reads)
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
UNION ALL
SELECT NULL, NULL, NULL FROM stale
"""


class Stale(Exception):
    """A conversation had moved on from the ``last_change`` the plan started from: nothing was written."""


def _conversations(rows: list[Any]) -> dict[Any, Conversation]:
    return {
        r["id"]: Conversation(
            r["last_seq"],
            tuple(r["members"] or ()),
            dict(zip(r["members"] or (), r["read_seqs"] or ())),
            r["last_change"],
        )
        for r in rows
    }


def _stored(row: Any) -> Stored:
    return Stored(**{**dict(row), "reactions": tuple(_reactions.decode(row["reactions"]))})


async def conversations(conn: Conn, ids: list[Any]) -> dict[Any, Conversation]:
    """Each conversation's counters, members and read pointers, read without a lock (the fast path; typing)."""
    return _conversations(await conn.fetch(READ_CONVERSATIONS, sorted(set(ids))))


async def targets(conn: Conn, commands: list[Command]) -> dict[uuid.UUID, Stored]:
    """The messages the batch's commands on one message name, by id (those that exist)."""
    ids = sorted({c.message_id for c in commands if isinstance(c, MessageCommand)})
    return {r["id"]: _stored(r) for r in await conn.fetch(TARGETS, ids)} if ids else {}


Pointers = dict[tuple[Any, str], int]


async def _write(conn: Conn, decided: Plan, state: Mapping[Any, Conversation]) -> Pointers:
    """Write what ``decided`` says, if its conversations are still at ``state``: the read pointers moved."""
    if not decided.writes:
        return {}
    new_rows = [
        (m.conversation_id, m.seq, m.id, m.sender_id, m.temp_message_id, m.content, m.sent_at, m.change)
        for m in decided.new_messages
    ]
    changed_rows = [
        (
            m.conversation_id,
            m.seq,
            m.content,
            m.edited_at,
            m.deleted,
            msgspec.json.encode(list(m.reactions)).decode(),
            m.change,
        )
        for m in decided.updated.values()
    ]
    keys = list(decided.read_to)
    counted = list(decided.last_change)
    written = set(counted) | {k[0] for k in keys}
    rows = await conn.fetch(
        WRITE,
        *_columns(new_rows, 8),
        list(written),
        [state[cid].last_change for cid in written],
        counted,
        [decided.last_change[cid] for cid in counted],
        [decided.latest_content.get(cid) for cid in counted],
        [k[0] for k in keys],
        [k[1] for k in keys],
        [decided.read_to[k] for k in keys],
        *_columns(changed_rows, 7),
    )
    if rows and rows[-1]["conversation_id"] is None:
        raise Stale
    return {(r["conversation_id"], r["user_id"]): r["last_read_seq"] for r in rows}


def _after(state: Mapping[Any, Conversation], decided: Plan, pointers: Pointers) -> dict[Any, Conversation]:
    """The conversations as the write left them: what to remember for the next batch."""
    moved: dict[Any, dict[str, int]] = {}
    for (cid, user), seq in pointers.items():
        moved.setdefault(cid, {})[user] = seq
    return {
        cid: Conversation(
            decided.latest[cid].seq if cid in decided.latest else c.last_seq,
            c.members,
            {**c.read, **moved[cid]} if cid in moved else c.read,
            decided.last_change.get(cid, c.last_change),
        )
        for cid, c in state.items()
    }


def _conversation_ids(commands: list[Command], named: Mapping[uuid.UUID, Stored]) -> set[uuid.UUID]:
    """The conversations of a batch: the commands', and those of the messages they name."""
    ids = {c.conversation_id for c in commands if c.conversation_id is not None}
    return ids | {m.conversation_id for m in named.values()}


async def store(
    conn: Conn, commands: list[Command], known: Known, named: Mapping[uuid.UUID, Stored]
) -> tuple[Plan, list[Event]]:
    """Apply ``commands`` in order: the plan, and the events to announce once this returns.

    ``named`` are the messages the batch's edits, deletes and reactions name (:func:`targets`,
    read by the caller before it sent on the commands that belong to another partition).

    The fast path is one or two round trips and no transaction: read the conversations not in
    ``known`` (what this writer's last batches left them at), plan as if no send were stored yet,
    write everything in one statement (atomic on its own). Whatever was read or remembered is
    checked there: the statement locks its conversations and writes nothing if one's
    ``last_change`` moved on (another writer, during a hand-over); ``(sender_id, tempMessageId)``
    refuses a send stored before (a redelivery), ``(conversation_id, seq)`` a seq taken meanwhile.
    Any of these, and the batch is stored again the careful way: in a transaction, the
    conversations locked, the stored sends and the named messages read again. Whatever fails, the
    batch's conversations are forgotten, so the next batch reads them.
    """
    generation = known.generation
    ids = _conversation_ids(commands, named)
    state = known.get(ids)
    try:
        if len(state) < len(ids):
            state.update(await conversations(conn, [cid for cid in ids if cid not in state]))
        decided = plan(commands, state, {}, _now_ms(), targets=named)
        try:
            pointers = await _write(conn, decided, state)
        except (asyncpg.UniqueViolationError, Stale):
            LOCKED.inc()
            known.forget(ids)
            async with conn.transaction():
                state, decided, pointers = await _store_locked(conn, commands)
            ids |= set(state)
    except BaseException:
        known.forget(ids)
        raise
    known.put(_after(state, decided, pointers), generation)
    return decided, decided.resolved(pointers)


async def _store_locked(conn: Conn, commands: list[Command]) -> tuple[dict[Any, Conversation], Plan, Pointers]:
    # the named messages tell which conversations to lock; once they are locked, nobody changes
    # those messages, and they are read again as they are
    ids = _conversation_ids(commands, await targets(conn, commands))
    state = _conversations(await conn.fetch(LOCK_CONVERSATIONS, sorted(ids)))
    named = await targets(conn, commands)
    sends = [c for c in commands if isinstance(c, SendMessage)]
    existing: dict[tuple[str, str], Stored] = {}
    if sends:
        rows = await conn.fetch(EXISTING, [c.user_id for c in sends], [c.temp_message_id for c in sends])
        existing = {(r["sender_id"], r["temp_message_id"]): _stored(r) for r in rows}
    decided = plan(commands, state, existing, _now_ms(), targets=named)
    return state, decided, await _write(conn, decided, state)
