"""WebSocket frames (docs/protocol.md section 2): parsing what clients send, rendering what they get.

Pure functions, no I/O. Client frames are PageNow's (``action``-routed JSON); server frames are
discriminated by ``type`` with camelCase keys.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec

from . import untrusted

MAX_CONTENT = 1000
MAX_TEMP_ID = 128
MAX_TOKEN = 8192
MAX_EMOJI = 32  # code points
MAX_REACTIONS = 50  # distinct emoji under one message
ACTIONS = (
    "send-message",
    "read-messages",
    "heartbeat",
    "typing",
    "authenticate",
    "edit-message",
    "delete-message",
    "react",
)
MESSAGE_ACTIONS = ("edit-message", "delete-message", "react")  # the commands on one message


@dataclass(frozen=True)
class FrameError(Exception):
    code: str
    message: str
    action: str | None = None
    temp_message_id: str | None = None
    message_id: str | None = None


@dataclass(frozen=True)
class SendFrame:
    temp_message_id: str
    conversation_id: uuid.UUID
    content: str


@dataclass(frozen=True)
class ReadFrame:
    conversation_id: uuid.UUID


@dataclass(frozen=True)
class TypingFrame:
    conversation_id: uuid.UUID


@dataclass(frozen=True)
class HeartbeatFrame:
    pass


@dataclass(frozen=True)
class EditFrame:
    message_id: uuid.UUID
    content: str


@dataclass(frozen=True)
class DeleteFrame:
    message_id: uuid.UUID


@dataclass(frozen=True)
class ReactFrame:
    message_id: uuid.UUID
    emoji: str
    on: bool


@dataclass(frozen=True)
class AuthenticateFrame:
    token: str


ClientFrame = (
    SendFrame | ReadFrame | TypingFrame | HeartbeatFrame | AuthenticateFrame | EditFrame | DeleteFrame | ReactFrame
)


def _readable(value: Any) -> str | None:
    """A string we can echo back in an error frame, or None."""
    return value if isinstance(value, str) and len(value) <= MAX_TEMP_ID and untrusted.storable(value) else None


def parse(text: str | bytes) -> ClientFrame:
    """Parse one client frame, or raise FrameError with the contract's error code."""
    try:
        data = untrusted.decode(text)
    except untrusted.Refused as exc:
        raise FrameError("invalid_frame", f"frame refused: {exc}") from None
    if not isinstance(data, dict):
        raise FrameError("invalid_frame", "frame must be a JSON object")
    action = _readable(data.get("action"))
    temp_id = _readable(data.get("tempMessageId"))
    message_id = _readable(data.get("messageId")) if action in MESSAGE_ACTIONS else None
    problem = untrusted.problem(data)
    if problem is not None:
        raise FrameError(
            "invalid_frame",
            problem,
            action=action if action in ACTIONS else None,
            temp_message_id=temp_id,
            message_id=message_id,
        )
    if data.get("action") is None:
        raise FrameError("missing_field", "action is required")
    if action not in ACTIONS:
        shown = str(data.get("action"))[:40]
        raise FrameError("unknown_action", f"unknown action {shown!r}", action=action)

    def fail(code: str, message: str) -> FrameError:
        return FrameError(code, message, action=action, temp_message_id=temp_id, message_id=message_id)

    if action == "heartbeat":
        return HeartbeatFrame()
    if action == "authenticate":
        token = data.get("token")
        if token is None:
            raise fail("missing_field", "token is required")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            raise fail("invalid_frame", f"token must be a string of 1 to {MAX_TOKEN} characters")
        return AuthenticateFrame(token)
    if action in MESSAGE_ACTIONS:
        return _message_frame(action, data, fail)
    conversation_id = _uuid_field(data, "conversationId", fail)
    if action == "read-messages":
        return ReadFrame(conversation_id)
    if action == "typing":
        return TypingFrame(conversation_id)
    # send-message
    if "tempMessageId" not in data or data["tempMessageId"] is None:
        raise fail("missing_field", "tempMessageId is required")
    raw_temp = data["tempMessageId"]
    if not isinstance(raw_temp, str) or not raw_temp or len(raw_temp) > MAX_TEMP_ID:
        raise fail("invalid_frame", f"tempMessageId must be a string of 1 to {MAX_TEMP_ID} characters")
    return SendFrame(raw_temp, conversation_id, _content(data, fail))


def _content(data: dict[str, Any], fail: Any) -> str:
    """``content``: 1 to 1000 characters once trailing whitespace is trimmed (send and edit)."""
    content = data.get("content")
    if content is None:
        raise fail("missing_field", "content is required")
    if not isinstance(content, str):
        raise fail("invalid_frame", "content must be a string")
    content = content.rstrip()
    if not content:
        raise fail("empty_content", "content is empty")
    if len(content) > MAX_CONTENT:
        raise fail("content_too_long", f"content is longer than {MAX_CONTENT} characters")
    return content


def emoji_problem(emoji: object) -> str | None:
    """Why ``emoji`` is not one (None if it is): 1 to 32 code points, none of them whitespace."""
    if not isinstance(emoji, str) or not 1 <= len(emoji) <= MAX_EMOJI:
        return f"emoji must be a string of 1 to {MAX_EMOJI} characters"
    if any(c.isspace() for c in emoji):  # joiners and variation selectors are part of many emoji: allowed
        return "emoji must not contain whitespace"
    return None


def _message_frame(action: str, data: dict[str, Any], fail: Any) -> EditFrame | DeleteFrame | ReactFrame:
    message_id = _uuid_field(data, "messageId", fail)
    if action == "delete-message":
        return DeleteFrame(message_id)
    if action == "edit-message":
        return EditFrame(message_id, _content(data, fail))
    if "emoji" not in data or data["emoji"] is None:
        raise fail("missing_field", "emoji is required")
    problem = emoji_problem(data["emoji"])
    if problem is not None:
        raise fail("invalid_frame", problem)
    if "on" not in data or data["on"] is None:
        raise fail("missing_field", "on is required")
    if not isinstance(data["on"], bool):
        raise fail("invalid_frame", "on must be true or false")
    return ReactFrame(message_id, data["emoji"], data["on"])


def _uuid_field(data: dict[str, Any], name: str, fail: Any) -> uuid.UUID:
    value = data.get(name)
    if value is None:
        raise fail("missing_field", f"{name} is required")
    if not isinstance(value, str):
        raise fail("invalid_frame", f"{name} must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise fail("invalid_frame", f"{name} must be a UUID") from None


# ---- server frames ----------------------------------------------------------------------------


def iso_utc(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and Z, e.g. 2021-12-18T07:11:47.123Z."""
    if moment.utcoffset():
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat(timespec="milliseconds")[:23] + "Z"  # isoformat is C; strftime is slow


_encoder = msgspec.json.Encoder()


def render(frame: dict[str, Any]) -> str:
    return _encoder.encode(frame).decode()


def new_message(
    *,
    message_id: uuid.UUID,
    temp_message_id: str,
    conversation_id: uuid.UUID,
    sender_id: str,
    content: str,
    sent_at: datetime,
    seq: int,
    change: int | None,
) -> str:
    frame: dict[str, Any] = {
        "type": "new-message",
        "messageId": str(message_id),
        "tempMessageId": temp_message_id,
        "conversationId": str(conversation_id),
        "senderId": sender_id,
        "content": content,
        "sentAt": iso_utc(sent_at),
        "seq": seq,
    }
    if change is not None:  # (an event of a writer of an earlier version has none)
        frame["change"] = change
    return render(frame)


def message_updated(
    *,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    seq: int,
    change: int,
    content: str,
    edited_at: datetime | None,
    deleted: bool,
    reactions: list[dict[str, Any]],
) -> str:
    return render(
        {
            "type": "message-updated",
            "conversationId": str(conversation_id),
            "messageId": str(message_id),
            "seq": seq,
            "change": change,
            "content": content,
            "editedAt": iso_utc(edited_at) if edited_at is not None else None,
            "deleted": deleted,
            "reactions": reactions,
        }
    )


def read_messages(*, conversation_id: uuid.UUID, user_id: str, last_read_seq: int) -> str:
    return render(
        {
            "type": "read-messages",
            "conversationId": str(conversation_id),
            "userId": user_id,
            "lastReadSeq": last_read_seq,
        }
    )


def read_receipt(*, conversation_id: uuid.UUID, user_id: str, last_read_seq: int) -> str:
    return render(
        {
            "type": "read-receipt",
            "conversationId": str(conversation_id),
            "userId": user_id,
            "lastReadSeq": last_read_seq,
        }
    )


def typing(*, conversation_id: uuid.UUID, user_id: str) -> str:
    return render({"type": "typing", "conversationId": str(conversation_id), "userId": user_id})


def conversation_created(
    *, conversation_id: uuid.UUID, title: str | None, is_group: bool, participant_ids: list[str]
) -> str:
    return render(
        {
            "type": "conversation-created",
            "conversationId": str(conversation_id),
            "title": title,
            "isGroup": is_group,
            "participantIds": participant_ids,
        }
    )


def error(
    code: str,
    message: str,
    *,
    action: str | None = None,
    temp_message_id: str | None = None,
    message_id: str | None = None,
) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if action is not None:
        frame["action"] = action
    if temp_message_id is not None:
        frame["tempMessageId"] = temp_message_id
    if message_id is not None:
        frame["messageId"] = message_id
    return render(frame)
