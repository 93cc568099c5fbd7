"""Paging rules of the REST reads: query parameters to pages and cursors. Pure: no I/O, table-tested.

History (``GET /conversations/{id}/messages``) always pages by ``seq`` (keyset, never OFFSET):

- PageNow's ``offset`` counts from the newest message. Because ``seq`` is gapless, the page at
  ``offset`` is the ``limit`` messages with ``seq <= last_seq - offset``, newest first.
- ``beforeSeq=N``: the ``limit`` messages before N, newest first.
- ``afterSeq=N``: the ``limit`` messages after N, oldest first (catch-up after a reconnect).
- ``order=asc`` returns the same page oldest-first; ``order=desc`` newest-first.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from shared import untrusted

from .requests import ParamError

MAX_LIMIT = 100


def _int(params: Mapping[str, str], name: str, lo: int, hi: int = untrusted.INT64_MAX) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        return untrusted.whole_number(raw, name, lo, hi)
    except untrusted.Refused as exc:
        raise ParamError(str(exc)) from None


@dataclass(frozen=True)
class HistoryPage:
    limit: int
    newest_first: bool  # the order rows are fetched in (the keyset direction)
    below: int | None  # fetch seq < below (newest first)
    above: int | None  # fetch seq > above (oldest first)
    offset: int | None  # PageNow's offset: the page ends below last_seq - offset + 1 (in the SQL)
    reverse: bool  # reverse the fetched page before returning it


def history(params: Mapping[str, str]) -> HistoryPage:
    limit = _int(params, "limit", 1, MAX_LIMIT)
    if limit is None:
        raise ParamError("limit is required")
    offset = _int(params, "offset", 0)
    before = _int(params, "beforeSeq", 1)
    after = _int(params, "afterSeq", 0)
    given = [name for name, v in (("offset", offset), ("beforeSeq", before), ("afterSeq", after)) if v is not None]
    if not given:
        raise ParamError("offset is required (or beforeSeq / afterSeq)")
    if len(given) > 1:
        raise ParamError(f"use one of offset, beforeSeq and afterSeq, not {' and '.join(given)}")
    order = params.get("order")
    if order not in (None, "asc", "desc"):
        raise ParamError("order must be asc or desc")
    if after is not None:
        return HistoryPage(limit, newest_first=False, below=None, above=after, offset=None, reverse=order == "desc")
    return HistoryPage(limit, newest_first=True, below=before, above=None, offset=offset, reverse=order == "asc")


@dataclass(frozen=True)
class ListPage:
    limit: int | None  # None: all of them (PageNow's behaviour when no limit is given)
    is_read: bool | None
    before: tuple[datetime, uuid.UUID] | None


def conversation_list(params: Mapping[str, str]) -> ListPage:
    is_read_raw = params.get("isRead")
    if is_read_raw not in (None, "true", "false"):
        raise ParamError("isRead must be true or false")
    is_read = None if is_read_raw is None else is_read_raw == "true"
    limit = _int(params, "limit", 1, MAX_LIMIT)
    before_raw = params.get("before")
    before = decode_cursor(before_raw) if before_raw is not None else None
    if before is not None and limit is None:
        limit = MAX_LIMIT
    return ListPage(limit=limit, is_read=is_read, before=before)


def encode_cursor(sent_at: datetime, conversation_id: uuid.UUID) -> str:
    raw = f"{sent_at.isoformat()}|{conversation_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, cid = raw.split("|", 1)
        moment = datetime.fromisoformat(when)
        if moment.tzinfo is None:
            raise ValueError
        return moment, uuid.UUID(cid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ParamError("before is not a cursor this service issued") from None


@dataclass(frozen=True)
class ChangesPage:
    after: int
    limit: int


DEFAULT_CHANGES = 50


def changes(params: Mapping[str, str]) -> ChangesPage:
    """``GET /conversations/{id}/changes?after=N[&limit=L]``: the messages whose latest change is
    after N, in change order (``after`` required, an integer >= 0; ``limit`` 1-100, default 50)."""
    after = _int(params, "after", 0)
    if after is None:
        raise ParamError("after is required (0 for everything)")
    limit = _int(params, "limit", 1, MAX_LIMIT)
    return ChangesPage(after=after, limit=DEFAULT_CHANGES if limit is None else limit)


MAX_QUERY = 200  # characters of q
MAX_INDEXED = 10  # words of q the trigram index looks up (the longest); the rest are checked per row
DEFAULT_SEARCH = 20


SearchCursor = tuple[datetime, uuid.UUID, int]  # (sent_at, conversation_id, seq) of the last result


@dataclass(frozen=True)
class SearchPage:
    words: tuple[str, ...]  # looked up in the index, longest first; LIKE's % _ \\ escaped, lowered by the database
    checked: tuple[str, ...]  # the other words, checked on the rows the index finds; escaped the same way
    conversation_id: uuid.UUID | None
    limit: int
    before: SearchCursor | None


def search(params: Mapping[str, str]) -> SearchPage:
    """``GET /search?q=...[&conversationId=...][&limit=L][&before=cursor]``: ``q`` of 1 to 200
    characters, split on whitespace; every word must match. A word inside another word of ``q``
    adds nothing and is dropped; the 10 longest are looked up in the index (each lookup costs, and
    a longer word is the more selective), any others checked on the rows found."""
    q = params.get("q")
    if q is None:
        raise ParamError("q is required")
    if not 1 <= len(q) <= MAX_QUERY:
        raise ParamError(f"q must be 1 to {MAX_QUERY} characters")
    if not untrusted.storable(q):
        raise ParamError("q contains U+0000 or an unpaired surrogate")
    distinct = dict.fromkeys(q.split())  # each word once, in order
    if not distinct:
        raise ParamError("q has no word (only whitespace)")
    # implied by a longer word (the database lowers character by character, so it stays implied)
    words = sorted((w for w in distinct if not any(w != o and w in o for o in distinct)), key=len, reverse=True)
    raw_cid = params.get("conversationId")
    try:
        conversation_id = uuid.UUID(raw_cid) if raw_cid is not None else None
    except ValueError:
        raise ParamError("conversationId must be a UUID") from None
    limit = _int(params, "limit", 1, MAX_LIMIT)
    before_raw = params.get("before")
    return SearchPage(
        words=tuple(like_escape(w) for w in words[:MAX_INDEXED]),
        checked=tuple(like_escape(w) for w in words[MAX_INDEXED:]),
        conversation_id=conversation_id,
        limit=DEFAULT_SEARCH if limit is None else limit,
        before=decode_search_cursor(before_raw) if before_raw is not None else None,
    )


def encode_search_cursor(sent_at: datetime, conversation_id: uuid.UUID, seq: int) -> str:
    """Results are newest sent first; messages of one batch share a time, and within it a
    conversation's come in seq order, so the position is all three."""
    return encode_cursor(sent_at, conversation_id) + "." + str(seq)


def decode_search_cursor(cursor: str) -> SearchCursor:
    head, _, seq = cursor.rpartition(".")
    if not (seq.isascii() and seq.isdigit() and 0 < len(seq) <= 18):
        raise ParamError("before is not a cursor this service issued")
    sent_at, conversation_id = decode_cursor(head)
    return sent_at, conversation_id, int(seq)


def like_escape(word: str) -> str:
    """``word`` matched literally inside a LIKE pattern (backslash is LIKE's escape)."""
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
