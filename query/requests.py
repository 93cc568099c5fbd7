"""Reading REST requests: path parameters and bodies to typed values, or ParamError (400). Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared import untrusted
from shared.auth import MAX_USER_ID_LENGTH

MAX_USER_ID = MAX_USER_ID_LENGTH  # one rule for a user id, in shared.auth
MAX_RECIPIENTS = 100


class ParamError(ValueError):
    """A bad query parameter or body: answer 400 with this message."""


def parse_uuid(value: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise ParamError(f"{name} must be a UUID") from None


def user_id(value: object, name: str) -> str:
    """A user id from a client: 1 to 50 characters that can be stored."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_USER_ID:
        raise ParamError(f"{name} must be a user id of 1 to {MAX_USER_ID} characters")
    if not untrusted.storable(value):
        raise ParamError(f"{name} contains U+0000 or an unpaired surrogate")
    return value


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
    if len(recipients) > MAX_RECIPIENTS * 2:
        raise ParamError(f"at most {MAX_RECIPIENTS} recipients")
    checked = [user_id(r, "recipientIdArr[]") for r in recipients]
    others = list(dict.fromkeys(r for r in checked if r != caller))
    if len(others) > MAX_RECIPIENTS:
        raise ParamError(f"at most {MAX_RECIPIENTS} recipients")
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
