import uuid
from datetime import datetime, timezone

import pytest

from query import paging, requests
from query.paging import HistoryPage
from query.requests import ParamError


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"limit": "20", "offset": "0"}, HistoryPage(20, True, None, None, 0, False)),
        ({"limit": "20", "offset": "40", "order": "asc"}, HistoryPage(20, True, None, None, 40, True)),
        ({"limit": "5", "beforeSeq": "100"}, HistoryPage(5, True, 100, None, None, False)),
        ({"limit": "5", "beforeSeq": "100", "order": "asc"}, HistoryPage(5, True, 100, None, None, True)),
        ({"limit": "100", "afterSeq": "0"}, HistoryPage(100, False, None, 0, None, False)),
        ({"limit": "7", "afterSeq": "12", "order": "desc"}, HistoryPage(7, False, None, 12, None, True)),
    ],
)
def test_history_params(params, expected):
    assert paging.history(params) == expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"offset": "0"}, "limit is required"),
        ({"limit": "0", "offset": "0"}, "limit must be between 1 and 100"),
        ({"limit": "101", "offset": "0"}, "limit must be between 1 and 100"),
        ({"limit": "ten", "offset": "0"}, "limit must be a whole number"),
        ({"limit": "1.5", "offset": "0"}, "limit must be a whole number"),
        ({"limit": "10"}, "offset is required"),
        ({"limit": "10", "offset": "-1"}, "offset must be >= 0"),
        ({"limit": "10", "beforeSeq": "0"}, "beforeSeq must be >= 1"),
        ({"limit": "10", "afterSeq": "x"}, "afterSeq must be a whole number"),
        ({"limit": "10", "offset": "0", "afterSeq": "3"}, "use one of"),
        ({"limit": "10", "offset": "0", "order": "sideways"}, "order must be asc or desc"),
    ],
)
def test_bad_history_params(params, message):
    with pytest.raises(ParamError) as info:
        paging.history(params)
    assert message in str(info.value)


def test_list_params():
    assert paging.conversation_list({}) == paging.ListPage(None, None, None)
    assert paging.conversation_list({"isRead": "false", "limit": "10"}) == paging.ListPage(10, False, None)
    assert paging.conversation_list({"isRead": "true"}).is_read is True
    for bad in ({"isRead": "yes"}, {"isRead": "True"}, {"limit": "0"}, {"before": "garbage!"}):
        with pytest.raises(ParamError):
            paging.conversation_list(bad)


def test_cursor_round_trip_and_default_limit():
    moment, cid = datetime(2022, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc), uuid.uuid4()
    cursor = paging.encode_cursor(moment, cid)
    page = paging.conversation_list({"before": cursor})
    assert page.before == (moment, cid) and page.limit == paging.MAX_LIMIT


@pytest.mark.parametrize(
    ("body", "caller", "expected"),
    [
        ({"recipientIdArr": ["bob"], "isGroup": False}, "alice", requests.NewConversation(["bob"], False, None)),
        ({"recipientIdArr": ["bob", "alice"]}, "alice", requests.NewConversation(["bob"], False, None)),
        (
            {"recipientIdArr": ["b", "c", "b"], "isGroup": True, "title": " Team "},
            "a",
            requests.NewConversation(["b", "c"], True, "Team"),
        ),
    ],
)
def test_new_conversation_bodies(body, caller, expected):
    assert requests.new_conversation(body, caller) == expected


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "x",
        {},
        {"recipientIdArr": []},
        {"recipientIdArr": "bob"},
        {"recipientIdArr": [5]},
        {"recipientIdArr": ["x" * 51]},
        {"recipientIdArr": ["bob", "carol"], "isGroup": False},
        {"recipientIdArr": ["alice"]},
        {"recipientIdArr": ["bob"], "isGroup": "no"},
        {"recipientIdArr": ["bob", "carol"], "isGroup": True},
        {"recipientIdArr": ["bob", "carol"], "isGroup": True, "title": "  "},
        {"recipientIdArr": ["bob"], "isGroup": True, "title": "t"},
        {"recipientIdArr": ["bob"], "title": 5},
        {"recipientIdArr": ["b", "c"], "isGroup": True, "title": "t" * 101},
    ],
)
def test_invalid_new_conversation_bodies(body):
    with pytest.raises(ParamError):
        requests.new_conversation(body, "alice")
