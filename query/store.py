"""The query service's SQL, next to the functions that run it. One or two indexed queries each."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from shared.db import Conn

from .paging import ChangesPage, HistoryPage, ListPage, SearchPage
from .requests import NewConversation

# Newest first straight from participants_user_recent_idx: a page reads `limit` index entries and
# probes their conversations by primary key, so the work is bounded by the page (or, without a
# limit, by the user's own conversations), never by how many conversations exist. OFFSET 0 keeps
# the planner from turning the probes into a hash join over a scan of every conversation.
LIST = """
SELECT c.id, c.title, c.is_group, c.last_sent_at, c.last_content, c.last_sender_id, c.last_seq, p.last_read_seq,
       ARRAY(SELECT o.user_id FROM participants o WHERE o.conversation_id = c.id ORDER BY o.user_id) AS participant_ids
FROM participants p
CROSS JOIN LATERAL (SELECT * FROM conversations c WHERE c.id = p.conversation_id OFFSET 0) c
WHERE p.user_id = $1
  AND p.last_sent_at IS NOT NULL
  AND ($2::timestamptz IS NULL OR (p.last_sent_at, p.conversation_id) < ($2::timestamptz, $3::uuid))
  AND ($4::boolean IS NULL OR (p.last_read_seq >= c.last_seq) = $4::boolean)
ORDER BY p.last_sent_at DESC, p.conversation_id DESC
LIMIT $5
"""


async def conversations(conn: Conn, user: str, page: ListPage) -> list[asyncpg.Record]:
    before_at, before_id = page.before if page.before else (None, None)
    return await conn.fetch(LIST, user, before_at, before_id, page.is_read, page.limit)


ONE = """
SELECT c.id, c.title, c.is_group, c.created_by, c.created_at, c.last_seq,
       ARRAY(SELECT o.user_id FROM participants o WHERE o.conversation_id = c.id ORDER BY o.user_id) AS participant_ids
FROM conversations c
JOIN participants p ON p.conversation_id = c.id AND p.user_id = $2
WHERE c.id = $1
"""


async def conversation(conn: Conn, cid: uuid.UUID, user: str) -> asyncpg.Record | None:
    """The conversation if ``user`` is in it; None otherwise (no existence leak)."""
    return await conn.fetchrow(ONE, cid, user)


# A history item's columns (reactions as the JSON text stored, passed through as it is).
_ITEM = ("id", "conversation_id", "seq", "sender_id", "content", "sent_at", "edited_at", "deleted", "change")
ITEM = ", ".join(_ITEM) + ", reactions::text AS reactions"

# One round trip: the caller's membership (no row at all when not a participant) and the page;
# a member's empty page is a single row of nulls.
_MEMBER_PAGE = """
WITH me AS (
    SELECT c.last_seq FROM conversations c
    JOIN participants p ON p.conversation_id = c.id AND p.user_id = $2
    WHERE c.id = $1
)
SELECT me.last_seq AS member_last_seq, m.*
FROM me LEFT JOIN LATERAL ({page}) m ON true
"""

# Newest first, below $3 (beforeSeq) or, for PageNow's offset $4, below last_seq - offset + 1.
NEWEST_FIRST = _MEMBER_PAGE.format(
    page=f"""
    SELECT {ITEM} FROM messages
    WHERE conversation_id = $1 AND seq < COALESCE($3::bigint, me.last_seq - $4::bigint + 1)
    ORDER BY seq DESC LIMIT $5"""
)

# Oldest first, after $3 (afterSeq: the catch-up after a reconnect).
OLDEST_FIRST = _MEMBER_PAGE.format(
    page=f"""
    SELECT {ITEM} FROM messages WHERE conversation_id = $1 AND seq > $3 ORDER BY seq ASC LIMIT $4"""
)

# What changed after $3, in change order: new, edited, deleted and reacted-to messages alike, each
# once, as it is now (messages_change_idx).
CHANGES = _MEMBER_PAGE.format(
    page=f"""
    SELECT {ITEM} FROM messages WHERE conversation_id = $1 AND change > $3 ORDER BY change ASC LIMIT $4"""
)


async def history(conn: Conn, cid: uuid.UUID, user: str, page: HistoryPage) -> list[asyncpg.Record] | None:
    """A page of messages, or None when ``user`` is not in the conversation."""
    if page.newest_first:
        rows = await conn.fetch(NEWEST_FIRST, cid, user, page.below, page.offset or 0, page.limit)
    else:
        rows = await conn.fetch(OLDEST_FIRST, cid, user, page.above, page.limit)
    if not rows:
        return None
    rows = [r for r in rows if r["id"] is not None]  # a member's empty page is one row of nulls
    return list(reversed(rows)) if page.reverse else rows


async def changes(conn: Conn, cid: uuid.UUID, user: str, page: ChangesPage) -> list[asyncpg.Record] | None:
    """The messages whose latest change is after ``page.after``, or None when ``user`` is not in the conversation."""
    rows = await conn.fetch(CHANGES, cid, user, page.after, page.limit)
    return [r for r in rows if r["id"] is not None] if rows else None


IS_MEMBER = "SELECT true FROM participants WHERE conversation_id = $1 AND user_id = $2"


def search_sql(words: int, checked: bool = False) -> str:
    """The search for ``words`` indexed words: each a condition on search_text (the content lowered,
    every non-ASCII character tripled: migration 0006) that the trigram index can answer, since the
    pattern is transformed the same way; the other words ($7, an array, with ``checked``) are one
    condition the index cannot answer (GIN takes no arrays), checked on the rows found. Without
    other words the condition is left out, not given an empty array: the planner cannot see into
    the array and guesses it removes most rows, which made it sort every match of a common word
    rather than walk the newest messages. It runs with plan_cache_mode
    force_custom_plan (query/reads.py): whether the index or a walk along messages_sent_idx is the
    cheaper way depends on the words, which a generic plan cannot see. $1 user, $2 one conversation
    or null, $3-$5 the cursor (sent_at, conversation, seq) or nulls, $6 limit, $7 the checked words,
    then the indexed words."""
    rest = "\n  AND m.search_text LIKE ALL (ARRAY(SELECT '%' || chat_search_text(w) || '%' FROM unnest($7::text[]) w))"
    rest = rest if checked else "\n  AND $7::text[] IS NOT NULL"
    matches = "".join(f"\n  AND m.search_text LIKE '%' || chat_search_text(${i + 8}) || '%'" for i in range(words))
    return f"""
SELECT {", ".join(f"m.{c}" for c in _ITEM)}, m.reactions::text AS reactions
FROM messages m
WHERE EXISTS (SELECT 1 FROM participants p WHERE p.conversation_id = m.conversation_id AND p.user_id = $1)
  AND ($2::uuid IS NULL OR m.conversation_id = $2::uuid)
  AND NOT m.deleted{matches}{rest}
  AND ($3::timestamptz IS NULL OR (m.sent_at, m.conversation_id, m.seq) < ($3::timestamptz, $4::uuid, $5::bigint))
ORDER BY m.sent_at DESC, m.conversation_id DESC, m.seq DESC
LIMIT $6
"""


async def search(conn: Conn, user: str, page: SearchPage) -> list[asyncpg.Record] | None:
    """A page of the messages of ``user``'s conversations (or of the one named: None if ``user``
    is not in it) matching every word, newest first; one row more than the page when there are more."""
    if page.conversation_id is not None and not await conn.fetchval(IS_MEMBER, page.conversation_id, user):
        return None
    at, cid, seq = page.before if page.before else (None, None, None)
    return await conn.fetch(
        search_sql(len(page.words), bool(page.checked)),
        user,
        page.conversation_id,
        at,
        cid,
        seq,
        page.limit + 1,
        list(page.checked),
        *page.words,
    )


PARTICIPANTS = """
SELECT o.user_id FROM participants o
WHERE o.conversation_id = $1 AND EXISTS (SELECT 1 FROM participants me WHERE me.conversation_id = $1 AND me.user_id = $2)
ORDER BY o.user_id
"""


async def participants(conn: Conn, cid: uuid.UUID, user: str) -> list[str]:
    return [r["user_id"] for r in await conn.fetch(PARTICIPANTS, cid, user)]


DIRECT = "SELECT id FROM conversations WHERE direct_key = $1"


async def direct(conn: Conn, user: str, other: str) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval(DIRECT, direct_key(user, other))
    return found


INSERT_CONVERSATION = """
INSERT INTO conversations (id, title, is_group, created_by, created_at, direct_key)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (direct_key) DO NOTHING
RETURNING id
"""

INSERT_PARTICIPANTS = """
INSERT INTO participants (conversation_id, user_id) SELECT $1, u FROM unnest($2::text[]) AS u
"""


async def create(conn: Conn, caller: str, new: NewConversation, now: datetime) -> tuple[uuid.UUID, bool]:
    """Create the conversation, or find the pair's direct one; returns (id, created)."""
    key = None if new.is_group else direct_key(caller, new.recipients[0])
    async with conn.transaction():
        cid = await conn.fetchval(INSERT_CONVERSATION, uuid.uuid4(), new.title, new.is_group, caller, now, key)
        if cid is None:  # the pair already has its direct conversation
            return await conn.fetchval(DIRECT, key), False
        await conn.execute(INSERT_PARTICIPANTS, cid, [caller, *new.recipients])
    return cid, True


def direct_key(a: str, b: str) -> str:
    """The unique key of the direct conversation between two users: unambiguous for any ids.

    The first id's length says where it ends, so no two pairs share a key (a separator would:
    ids may contain it). Ids are ordered by code point, as ``COLLATE "C"`` in migration 0003.
    """
    first, second = sorted((a, b))
    return f"{len(first)}:{first}{second}"
