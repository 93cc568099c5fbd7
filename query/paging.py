"""Parameter and paging rules of the REST reads. Pure: no I/O, table-tested.

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

MAX_LIMIT = 100
MAX_USER_ID = 50


class ParamError(ValueError):
    """A bad query parameter or body: answer 400 with this message."""


def parse_uuid(value: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise ParamError(f"{name} must be a UUID") from None


def _int(params: Mapping[str, str], name: str, lo: int, hi: int = untrusted.INT64_MAX) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        return untrusted.whole_number(raw, name, lo, hi)
    except untrusted.Refused as exc:
        raise ParamError(str(exc)) from None


def user_id(value: object, name: str) -> str:
    """A user id from a client: 1 to 50 characters that can be stored."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_USER_ID:
        raise ParamError(f"{name} must be a user id of 1 to {MAX_USER_ID} characters")
    if not untrusted.storable(value):
        raise ParamError(f"{name} contains U+0000 or an unpaired surrogate")
    return value


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
class NewConversation:
    recipients: list[str]
    is_group: bool
    title: str | None


def new_conversation(body: object, caller: str) -> NewConversation:
    """Validate ``POST /conversation``'s body: ``{"recipientIdArr":[...],"isGroup":bool,"title":str}``."""
    if not isinstance(body, dict):
        raise ParamError("body must be a JSON object")
    recipients = body.get("recipientIdArr")
    if not isinstance(recipients, list) or not recipients:
        raise ParamError("recipientIdArr must be a non-empty array of user ids")
    if len(recipients) > MAX_LIMIT * 2:
        raise ParamError(f"at most {MAX_LIMIT} recipients")
    checked = [user_id(r, "recipientIdArr[]") for r in recipients]
    others = list(dict.fromkeys(r for r in checked if r != caller))
    if len(others) > MAX_LIMIT:
        raise ParamError(f"at most {MAX_LIMIT} recipients")
    is_group = body.get("isGroup", False)
    if not isinstance(is_group, bool):
        raise ParamError("isGroup must be true or false")
    title = body.get("title")
    if title is not None and not isinstance(title, str):
        raise ParamError("title must be a string")
    if isinstance(title, str) and not untrusted.storable(title):
        raise ParamError("title contains U+0000 or an unpaired surrogate")
    title = title.strip() if isinstance(title, str) else None
    if title is not None and len(title) > 100:
        raise ParamError("title is longer than 100 characters")
    if is_group:
        if len(others) < 2:
            raise ParamError("a group needs at least two recipients besides you")
        if not title:
            raise ParamError("a group needs a non-empty title")
    elif len(others) != 1:
        raise ParamError("a direct conversation needs exactly one recipient other than you")
    return NewConversation(recipients=others, is_group=is_group, title=title or None)


def direct_key(a: str, b: str) -> str:
    """The unique key of the direct conversation between two users: unambiguous for any ids.

    The first id's length says where it ends, so no two pairs share a key (a separator would:
    ids may contain it). Ids are ordered by code point, as ``COLLATE "C"`` in migration 0003.
    """
    first, second = sorted((a, b))
    return f"{len(first)}:{first}{second}"
