import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from shared import frames
from shared.frames import FrameError, HeartbeatFrame, ReadFrame, SendFrame, TypingFrame

CID = str(uuid.uuid4())


def frame(**kw):
    return json.dumps(kw)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            frame(action="send-message", tempMessageId="t1", conversationId=CID, content="hello"),
            SendFrame("t1", uuid.UUID(CID), "hello"),
        ),
        (
            frame(action="send-message", tempMessageId="t1", conversationId=CID, content="  hi \n\t "),
            SendFrame("t1", uuid.UUID(CID), "  hi"),
        ),
        (
            frame(action="send-message", tempMessageId="t", conversationId=CID, content="x" * 1000 + "   "),
            SendFrame("t", uuid.UUID(CID), "x" * 1000),
        ),
        (frame(action="read-messages", conversationId=CID), ReadFrame(uuid.UUID(CID))),
        (frame(action="typing", conversationId=CID), TypingFrame(uuid.UUID(CID))),
        (frame(action="heartbeat"), HeartbeatFrame()),
        (frame(action="heartbeat", extra=1), HeartbeatFrame()),
    ],
)
def test_valid_frames(text, expected):
    assert frames.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "code", "temp_id"),
    [
        ("{not json", "invalid_frame", None),
        ("[1,2]", "invalid_frame", None),
        ('"send-message"', "invalid_frame", None),
        (frame(tempMessageId="t1"), "missing_field", None),
        (frame(action="delete-conversation"), "unknown_action", None),
        (frame(action=5), "unknown_action", None),
        (frame(action="send-message", tempMessageId="t1", content="hi"), "missing_field", "t1"),
        (frame(action="send-message", conversationId=CID, content="hi"), "missing_field", None),
        (frame(action="send-message", tempMessageId="t1", conversationId=CID), "missing_field", "t1"),
        (frame(action="send-message", tempMessageId="t1", conversationId="nope", content="hi"), "invalid_frame", "t1"),
        (frame(action="send-message", tempMessageId="t1", conversationId=CID, content=5), "invalid_frame", "t1"),
        (frame(action="send-message", tempMessageId="", conversationId=CID, content="hi"), "invalid_frame", ""),
        (frame(action="send-message", tempMessageId=7, conversationId=CID, content="hi"), "invalid_frame", None),
        (frame(action="send-message", tempMessageId="t1", conversationId=CID, content="   \n"), "empty_content", "t1"),
        (frame(action="send-message", tempMessageId="t1", conversationId=CID, content=""), "empty_content", "t1"),
        (
            frame(action="send-message", tempMessageId="t1", conversationId=CID, content="x" * 1001),
            "content_too_long",
            "t1",
        ),
        (frame(action="read-messages"), "missing_field", None),
        (frame(action="typing", conversationId=12), "invalid_frame", None),
    ],
)
def test_invalid_frames_get_their_code(text, code, temp_id):
    with pytest.raises(FrameError) as info:
        frames.parse(text)
    assert info.value.code == code
    assert info.value.temp_message_id == temp_id


MID = "7c3a1f4e-0000-8000-8000-000000000001"


@pytest.mark.parametrize(
    ("text", "code", "message_id"),
    [
        (frame(action="edit-message", content="hi"), "missing_field", None),
        (frame(action="edit-message", messageId="nope", content="hi"), "invalid_frame", "nope"),
        (frame(action="edit-message", messageId=MID), "missing_field", MID),
        (frame(action="edit-message", messageId=MID, content=" \t"), "empty_content", MID),
        (frame(action="edit-message", messageId=MID, content="x" * 1001), "content_too_long", MID),
        (frame(action="edit-message", messageId=MID, content="a\u0000b"), "invalid_frame", MID),
        (frame(action="delete-message"), "missing_field", None),
        (frame(action="delete-message", messageId=42), "invalid_frame", None),
        (frame(action="react", messageId=MID, on=True), "missing_field", MID),
        (frame(action="react", messageId=MID, emoji="👍"), "missing_field", MID),
        (frame(action="react", messageId=MID, emoji="", on=True), "invalid_frame", MID),
        (frame(action="react", messageId=MID, emoji="👍 👍", on=True), "invalid_frame", MID),  # whitespace
        (frame(action="react", messageId=MID, emoji="x" * 33, on=True), "invalid_frame", MID),
        (frame(action="react", messageId=MID, emoji=["👍"], on=True), "invalid_frame", MID),
        (frame(action="react", messageId=MID, emoji="👍", on="yes"), "invalid_frame", MID),
    ],
)
def test_message_frames_get_their_code_and_carry_the_message_id(text, code, message_id):
    with pytest.raises(FrameError) as info:
        frames.parse(text)
    assert (info.value.code, info.value.message_id) == (code, message_id)
    assert (
        json.loads(frames.error(info.value.code, "x", message_id=info.value.message_id)).get("messageId") == message_id
    )


def test_message_frames_parse():
    assert frames.parse(frame(action="edit-message", messageId=MID, content="fixed  ")) == frames.EditFrame(
        uuid.UUID(MID), "fixed"
    )
    assert frames.parse(frame(action="delete-message", messageId=MID)) == frames.DeleteFrame(uuid.UUID(MID))
    # 32 code points at most, joiners and variation selectors included (they make many emoji)
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert frames.parse(frame(action="react", messageId=MID, emoji=family, on=True)) == frames.ReactFrame(
        uuid.UUID(MID), family, True
    )
    assert frames.parse(frame(action="react", messageId=MID, emoji="e" * 32, on=False)).emoji == "e" * 32


def test_sent_at_is_iso_utc_with_millis_and_z():
    moment = datetime(2021, 12, 18, 7, 11, 47, 123456, tzinfo=timezone.utc)
    assert frames.iso_utc(moment) == "2021-12-18T07:11:47.123Z"
    assert frames.iso_utc(moment.astimezone(timezone(timedelta(hours=5)))) == "2021-12-18T07:11:47.123Z"


def test_new_message_frame_has_pagenow_fields_plus_seq_and_change():
    mid = uuid.uuid4()

    def render(change):
        return json.loads(
            frames.new_message(
                message_id=mid,
                temp_message_id="t1",
                conversation_id=uuid.UUID(CID),
                sender_id="alice",
                content="hi",
                sent_at=datetime(2021, 12, 18, 7, 11, 47, 123000, tzinfo=timezone.utc),
                seq=7,
                change=change,
            )
        )

    pagenow = {
        "type": "new-message",
        "messageId": str(mid),
        "tempMessageId": "t1",
        "conversationId": CID,
        "senderId": "alice",
        "content": "hi",
        "sentAt": "2021-12-18T07:11:47.123Z",
    }
    assert render(9) == {**pagenow, "seq": 7, "change": 9}
    assert render(None) == {**pagenow, "seq": 7}  # an event of a writer of an earlier version has no change


def test_error_frame_echoes_action_and_temp_id_only_when_known():
    assert json.loads(frames.error("rate_limited", "slow down")) == {
        "type": "error",
        "code": "rate_limited",
        "message": "slow down",
    }
    assert json.loads(frames.error("unavailable", "retry", action="send-message", temp_message_id="t")) == {
        "type": "error",
        "code": "unavailable",
        "message": "retry",
        "action": "send-message",
        "tempMessageId": "t",
    }
