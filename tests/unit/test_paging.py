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


def test_changes_params():
    assert paging.changes({"after": "0"}) == paging.ChangesPage(after=0, limit=paging.DEFAULT_CHANGES)
    assert paging.changes({"after": "41", "limit": "100"}) == paging.ChangesPage(after=41, limit=100)
    for bad, message in (
        ({}, "after is required"),
        ({"after": "-1"}, "after must be >= 0"),
        ({"after": "1", "limit": "101"}, "limit must be between 1 and 100"),
        ({"after": "x"}, "after must be a whole number"),
    ):
        with pytest.raises(ParamError) as info:
            paging.changes(bad)
        assert message in str(info.value)


CID_A = uuid.UUID("6f1c54f6-3e0e-4a4b-9c6a-1d2e3f4a5b6c")


@pytest.mark.parametrize(
    ("params", "words", "checked", "conversation_id", "limit"),
    [
        ({"q": "hello"}, ("hello",), (), None, paging.DEFAULT_SEARCH),
        ({"q": "  Hello   world "}, ("Hello", "world"), (), None, paging.DEFAULT_SEARCH),
        ({"q": "a a b a"}, ("a", "b"), (), None, paging.DEFAULT_SEARCH),  # each word once
        ({"q": "at lunch unch"}, ("lunch", "at"), (), None, paging.DEFAULT_SEARCH),  # longest first; unch is implied
        ({"q": "100%_sure\\"}, ("100\\%\\_sure\\\\",), (), None, paging.DEFAULT_SEARCH),  # literal, not patterns
        ({"q": "東京\u3000駅", "conversationId": str(CID_A), "limit": "5"}, ("東京", "駅"), (), CID_A, 5),
        (
            {"q": "a bb " + " ".join(f"w{i:02}" for i in range(10))},
            tuple(f"w{i:02}" for i in range(10)),
            ("bb", "a"),  # past the 10 longest: checked on the rows found
            None,
            paging.DEFAULT_SEARCH,
        ),
    ],
)
def test_search_params(params, words, checked, conversation_id, limit):
    page = paging.search(params)
    assert (page.words, page.checked, page.conversation_id, page.limit, page.before) == (
        words,
        checked,
        conversation_id,
        limit,
        None,
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "q is required"),
        ({"q": ""}, "q must be 1 to 200 characters"),
        ({"q": "x" * 201}, "q must be 1 to 200 characters"),
        ({"q": " \t\u3000"}, "q has no word"),
        ({"q": "a\x00b"}, "U+0000"),
        ({"q": "a", "conversationId": "nope"}, "conversationId must be a UUID"),
        ({"q": "a", "limit": "0"}, "limit must be between 1 and 100"),
        ({"q": "a", "before": "garbage"}, "before is not a cursor"),
        ({"q": "a", "before": "garbage.12"}, "before"),
    ],
)
def test_bad_search_params(params, message):
    with pytest.raises(ParamError) as info:
        paging.search(params)
    assert message in str(info.value)


def test_search_cursor_round_trip():
    moment = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=timezone.utc)
    cursor = paging.encode_search_cursor(moment, CID_A, 9_007_199_254_740_993)
    assert paging.search({"q": "x", "before": cursor}).before == (moment, CID_A, 9_007_199_254_740_993)
    with pytest.raises(ParamError):
        paging.decode_search_cursor(paging.encode_cursor(moment, CID_A))  # a list cursor is not one
