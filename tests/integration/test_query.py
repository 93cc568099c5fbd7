"""The query service against real servers, with every response checked against /openapi.json."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import aiohttp
import jwt
import pytest
from jsonschema import Draft202012Validator

from ..harness import SECRET, System, token

DOC = json.loads(open(__file__.rsplit("/tests/", 1)[0] + "/query/openapi.json").read())


def template_of(method: str, path: str) -> str:
    for template in DOC["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in DOC["paths"][template]:
            return template
    raise AssertionError(f"{method} {path} is not in the OpenAPI document")


def check_against_openapi(method: str, path: str, status: int, body: Any) -> None:
    responses = DOC["paths"][template_of(method, path)][method.lower()]["responses"]
    spec = responses.get(str(status))
    assert spec is not None, f"{method} {path} answered {status}, which the document does not list"
    if "$ref" in spec:
        spec = DOC["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
    schema = spec["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": DOC["components"]}).validate(body)


class Api:
    def __init__(self, system: System, session: aiohttp.ClientSession) -> None:
        self.base = system.of("query")[0].url
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        user: str | None = None,
        *,
        auth: str | None = None,
        params: dict | None = None,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict | None = None,
    ) -> tuple[int, Any, dict]:
        hdrs = dict(headers or {})
        if auth is not None:
            hdrs["Authorization"] = auth
        elif user is not None:
            hdrs["Authorization"] = token(user)  # raw, as PageNow's chat-client sends it
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        async with self.session.request(method, self.base + path, params=params, data=data, headers=hdrs) as resp:
            text = await resp.text()
            payload = json.loads(text) if text else None
            if resp.status != 204:
                assert resp.content_type == "application/json", (resp.status, text[:200])
                check_against_openapi(method, path, resp.status, payload)
            return resp.status, payload, dict(resp.headers)

    async def get(self, path: str, user: str | None = None, **kw: Any) -> tuple[int, Any]:
        status, body, _ = await self.call("GET", path, user, **kw)
        return status, body

    async def post(self, path: str, user: str, body: Any) -> tuple[int, Any]:
        status, payload, _ = await self.call("POST", path, user, body=body)
        return status, payload


@pytest.fixture
async def api(system):
    await system.start("query")
    async with aiohttp.ClientSession() as session:
        yield Api(system, session)


async def seed(
    system: System,
    cid: uuid.UUID,
    messages: list[tuple[str, str]],
    start_seq: int = 1,
    read: dict[str, int] | None = None,
) -> None:
    """Store messages as the writer would (seq, latest fields, the sender's read pointer)."""
    conn = await system.db()
    try:
        async with conn.transaction():
            seq = start_seq - 1
            for sender, content in messages:
                seq += 1
                await conn.execute(
                    "INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content, sent_at, change)"
                    " VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $2)",
                    cid,
                    seq,
                    uuid.uuid4(),
                    sender,
                    uuid.uuid4().hex,
                    content,
                    seq / 1000,
                )
                await conn.execute(
                    "UPDATE participants SET last_read_seq = $3 WHERE conversation_id = $1 AND user_id = $2",
                    cid,
                    sender,
                    seq,
                )
            await conn.execute(
                "UPDATE conversations c SET last_seq = m.seq, last_change = m.seq, last_message_id = m.id,"
                " last_sent_at = m.sent_at, last_sender_id = m.sender_id, last_content = m.content FROM messages m"
                " WHERE c.id = $1 AND m.conversation_id = $1 AND m.seq = $2",
                cid,
                seq,
            )
            await conn.execute(
                "UPDATE participants p SET last_sent_at = c.last_sent_at FROM conversations c"
                " WHERE c.id = $1 AND p.conversation_id = $1",
                cid,
            )
            for user, upto in (read or {}).items():
                await conn.execute(
                    "UPDATE participants SET last_read_seq = $3 WHERE conversation_id = $1 AND user_id = $2",
                    cid,
                    user,
                    upto,
                )
    finally:
        await conn.close()


async def test_conversation_list_pagenow_semantics(system, api):
    ab = await system.conversation(["alice", "bob"])
    ac = await system.conversation(["alice", "carol"])  # no messages: not listed
    group = await system.conversation(["alice", "bob", "carol"], title="Trip")
    await seed(system, ab, [("alice", "hi bob"), ("bob", "hi alice")])
    await asyncio.sleep(0.01)
    await seed(system, group, [("carol", "plans?"), ("alice", "sure")])  # alice sent the latest: read
    status, items = await api.get("/conversations", "alice")
    assert status == 200
    assert [i["conversationId"] for i in items] == [str(group), str(ab)]
    assert str(ac) not in {i["conversationId"] for i in items}
    g, d = items
    assert g == {
        "conversationId": str(group),
        "title": "Trip",
        "isGroup": True,
        "sentAt": g["sentAt"],
        "latestContent": "sure",
        "senderId": "alice",
        "participantId": "bob",
        "isRead": True,
        "unreadCount": 0,
        "lastSeq": 2,
        "lastReadSeq": 2,
        "participantIds": ["alice", "bob", "carol"],
    }
    assert d["participantId"] == "bob" and d["isRead"] is False and d["unreadCount"] == 1
    assert d["latestContent"] == "hi alice" and d["senderId"] == "bob" and d["isGroup"] is False

    assert [i["conversationId"] for i in (await api.get("/conversations", "alice", params={"isRead": "false"}))[1]] == [
        str(ab)
    ]
    assert [i["conversationId"] for i in (await api.get("/conversations", "alice", params={"isRead": "true"}))[1]] == [
        str(group)
    ]
    for bad in ("maybe", "1", "TRUE", ""):
        status, body = await api.get("/conversations", "alice", params={"isRead": bad})
        assert status == 400 and body["error"] == "bad_request"
    # carol has read nothing of the group but wrote its first message: 1 unread (alice's)
    carol = (await api.get("/conversations", "carol"))[1]
    assert [(i["conversationId"], i["unreadCount"], i["isRead"]) for i in carol] == [(str(group), 1, False)]


async def test_conversation_list_pages_with_a_cursor(system, api):
    cids = []
    for i in range(7):
        cid = await system.conversation(["alice", f"friend{i}"])
        await seed(system, cid, [("alice", f"m{i}")])
        cids.append(str(cid))
        await asyncio.sleep(0.002)
    seen, cursor = [], None
    while True:
        params = {"limit": "3", **({"before": cursor} if cursor else {})}
        status, page, headers = await api.call("GET", "/conversations", "alice", params=params)
        assert status == 200
        seen += [i["conversationId"] for i in page]
        cursor = headers.get("X-Next-Before")
        if not cursor:
            break
    assert seen == list(reversed(cids))


async def test_history_offset_order_and_keyset(system, api):
    cid = await system.conversation(["alice", "bob"])
    await seed(system, cid, [("alice" if i % 2 else "bob", f"message {i}") for i in range(1, 26)])
    path = f"/conversations/{cid}/messages"

    async def seqs(**params: str) -> list[int]:
        status, body = await api.get(path, "bob", params=params)
        assert status == 200, body
        return [m["seq"] for m in body]

    assert await seqs(limit="10", offset="0") == list(range(25, 15, -1))  # newest first
    assert await seqs(limit="10", offset="10") == list(range(15, 5, -1))
    assert await seqs(limit="10", offset="10", order="asc") == list(range(6, 16))  # the same page, oldest first
    assert await seqs(limit="10", offset="20") == [5, 4, 3, 2, 1]
    assert await seqs(limit="10", offset="30") == []
    assert await seqs(limit="3", afterSeq="20") == [21, 22, 23]  # catch-up after a reconnect
    assert await seqs(limit="100", afterSeq="23") == [24, 25]
    assert await seqs(limit="100", afterSeq="25") == []
    assert await seqs(limit="4", beforeSeq="5") == [4, 3, 2, 1]
    assert await seqs(limit="2", beforeSeq="10", order="asc") == [8, 9]
    status, body = await api.get(path, "bob", params={"limit": "1", "offset": "0"})
    message = body[0]
    pagenow = {"messageId", "conversationId", "sentAt", "senderId", "content"}
    assert set(message) == pagenow | {"seq", "editedAt", "deleted", "reactions", "change"}  # and ours
    assert (message["editedAt"], message["deleted"], message["reactions"]) == (None, False, [])
    assert message["content"] == "message 25" and message["senderId"] == "alice"
    for params in (
        {"offset": "0"},
        {"limit": "10"},
        {"limit": "x", "offset": "0"},
        {"limit": "101", "offset": "0"},
        {"limit": "10", "offset": "-1"},
        {"limit": "10", "offset": "0", "order": "up"},
        {"limit": "10", "afterSeq": "1", "beforeSeq": "5"},
    ):
        status, body = await api.get(path, "bob", params=params)
        assert status == 400 and body["error"] == "bad_request", params


async def test_paging_through_10000_messages_returns_each_once(system, api):
    cid = await system.conversation(["alice", "bob"])
    conn = await system.db()
    try:
        await conn.execute(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content, sent_at, change)"
            " SELECT $1, s, gen_random_uuid(), 'alice', 't' || s, 'm' || s, now(), s FROM generate_series(1, 10000) s",
            cid,
        )
        await conn.execute(
            "UPDATE conversations SET last_seq = 10000, last_change = 10000, last_sent_at = now(), last_content = 'm10000',"
            " last_sender_id = 'alice' WHERE id = $1",
            cid,
        )
        await conn.execute("UPDATE participants SET last_sent_at = now() WHERE conversation_id = $1", cid)
    finally:
        await conn.close()
    seen: list[int] = []
    before = None
    while True:
        params = {"limit": "100", **({"beforeSeq": str(before)} if before else {"offset": "0"})}
        status, page = await api.get(f"/conversations/{cid}/messages", "bob", params=params)
        assert status == 200
        if not page:
            break
        seen += [m["seq"] for m in page]
        before = page[-1]["seq"]
    assert len(seen) == 10000 and len(set(seen)) == 10000 and seen == sorted(seen, reverse=True)
    after, caught_up = 0, []
    while True:
        status, page = await api.get(
            f"/conversations/{cid}/messages", "bob", params={"limit": "100", "afterSeq": str(after)}
        )
        if not page:
            break
        caught_up += [m["seq"] for m in page]
        after = page[-1]["seq"]
    assert caught_up == list(range(1, 10001))


async def test_one_conversation_participants_and_direct_lookup(system, api):
    cid = await system.conversation(["alice", "bob"])
    status, body = await api.get(f"/conversations/{cid}", "alice")
    assert status == 200
    assert body["conversation_id"] == body["conversationId"] == str(cid)
    assert body["isGroup"] is False and body["participantId"] == "bob" and body["participantIds"] == ["alice", "bob"]
    assert body["createdBy"] == "alice" and body["lastSeq"] == 0 and body["createdAt"].endswith("Z")
    assert await api.get(f"/conversations/{cid}/participants", "bob") == (200, ["alice", "bob"])
    assert await api.get("/conversation/direct/bob", "alice") == (200, {"conversationId": str(cid)})
    assert await api.get("/conversation/direct/alice", "bob") == (200, {"conversationId": str(cid)})
    assert await api.get("/conversation/direct/zed", "alice") == (200, None)  # never 404


async def test_create_conversations(system, api):
    await system.start_all()  # writer, notifier, gateway: online participants get a frame
    bob, carol = await system.connect("bob"), await system.connect("carol")
    status, first = await api.post("/conversation", "alice", {"recipientIdArr": ["bob"], "isGroup": False, "title": ""})
    assert status == 200
    created = await bob.wait_frame(type="conversation-created")
    assert created == {
        "type": "conversation-created",
        "conversationId": first["conversationId"],
        "title": None,
        "isGroup": False,
        "participantIds": ["alice", "bob"],
    }
    assert await api.post("/conversation", "alice", {"recipientIdArr": ["bob"], "isGroup": False}) == (200, first)
    assert await api.post("/conversation", "bob", {"recipientIdArr": ["alice"], "isGroup": False}) == (200, first)
    assert await api.get("/conversation/direct/bob", "alice") == (200, first)

    status, group = await api.post(
        "/conversation", "alice", {"recipientIdArr": ["bob", "carol"], "isGroup": True, "title": "Trip"}
    )
    assert status == 200 and group != first
    frame = await carol.wait_frame(type="conversation-created", conversationId=group["conversationId"])
    assert (
        frame["title"] == "Trip" and frame["isGroup"] is True and frame["participantIds"] == ["alice", "bob", "carol"]
    )
    assert (await api.get(f"/conversations/{group['conversationId']}/participants", "carol"))[1] == [
        "alice",
        "bob",
        "carol",
    ]
    # the new conversation works on the real-time path
    await carol.send_message(uuid.UUID(group["conversationId"]), "hello all", temp_id="g1")
    await bob.wait_frame(type="new-message", tempMessageId="g1")

    for body in (
        {"recipientIdArr": []},
        {"recipientIdArr": ["bob", "carol"], "isGroup": False},
        {"recipientIdArr": ["bob"], "isGroup": True, "title": "x"},
        {"recipientIdArr": ["bob", "carol"], "isGroup": True},
        {"recipientIdArr": ["alice"]},
        {"recipientIdArr": "bob"},
        {"isGroup": False},
        [1, 2],
        {"recipientIdArr": ["bob"], "isGroup": "yes"},
    ):
        status, payload = await api.post("/conversation", "alice", body)
        assert status == 400 and payload["error"] == "bad_request", body
    status, payload, _ = await api.call("POST", "/conversation", "alice", raw=b"{not json")
    assert status == 400
    status, payload, _ = await api.call("POST", "/conversation", "alice", raw=b"x" * 20000)
    assert status == 413 and payload["error"] == "too_large"


def bad_tokens() -> dict[str, str]:
    now = int(time.time())
    return {
        "garbage": "garbage",
        "expired": jwt.encode({"cognito:username": "alice", "exp": now - 300}, SECRET, algorithm="HS256"),
        "forged": jwt.encode({"cognito:username": "alice", "exp": now + 300}, "x" * 40, algorithm="HS256"),
        "no exp": jwt.encode({"cognito:username": "alice"}, SECRET, algorithm="HS256"),
        "alg none": jwt.encode({"cognito:username": "alice", "exp": now + 300}, None, algorithm="none"),
        "wrong alg": jwt.encode({"cognito:username": "alice", "exp": now + 300}, SECRET + "x" * 30, algorithm="HS512"),
    }


async def test_every_route_checks_token_and_membership(system, api):
    cid = await system.conversation(["alice", "bob"])
    await seed(system, cid, [("alice", "secret")])
    routes = [
        ("GET", "/conversations", None),
        ("GET", f"/conversations/{cid}", None),
        ("GET", f"/conversations/{cid}/messages", {"limit": "10", "offset": "0"}),
        ("GET", f"/conversations/{cid}/participants", None),
        ("GET", f"/conversations/{cid}/changes", {"after": "0"}),
        ("GET", "/search", {"q": "secret"}),
        ("GET", "/conversation/direct/bob", None),
        ("POST", "/conversation", None),
    ]
    for method, path, params in routes:
        status, body, _ = await api.call(
            method, path, params=params, body={"recipientIdArr": ["bob"]} if method == "POST" else None
        )
        assert status == 401 and body["error"] == "unauthorized", (path, "missing")
        for name, bad in bad_tokens().items():
            status, body, _ = await api.call(
                method, path, auth=bad, params=params, body={"recipientIdArr": ["bob"]} if method == "POST" else None
            )
            assert status == 401, (path, name)
    status, body, _ = await api.call("GET", f"/conversations/{cid}", auth=f"Bearer {token('alice')}")
    assert status == 200  # Bearer works too
    for path, params in (
        (f"/conversations/{cid}", None),
        (f"/conversations/{cid}/messages", {"limit": "1", "offset": "0"}),
        (f"/conversations/{cid}/participants", None),
        (f"/conversations/{cid}/changes", {"after": "0"}),
    ):
        status, body = await api.get(path, "mallory", params=params)
        assert status == 404 and body["error"] == "not_found"
        unknown = path.replace(str(cid), str(uuid.uuid4()))
        assert (await api.get(unknown, "alice", params=params))[0] == 404  # same answer: no existence leak
        status, body = await api.get(path.replace(str(cid), "not-a-uuid"), "alice", params=params)
        assert status == 400 and "UUID" in body["message"]
    assert (await api.get("/conversations", "mallory")) == (200, [])
    # search: nothing of others' conversations, and a conversation the caller is not in is 404
    assert (await api.get("/search", "mallory", params={"q": "secret"})) == (200, {"results": [], "next": None})
    status, body = await api.get("/search", "mallory", params={"q": "secret", "conversationId": str(cid)})
    assert status == 404 and body["error"] == "not_found"
    status, body = await api.get("/search", "alice", params={"q": "secret", "conversationId": str(uuid.uuid4())})
    assert status == 404


async def test_cors_and_openapi(system):
    query = await system.start("query", env={"CHAT_ALLOWED_ORIGINS": "https://app.example.com"})
    async with aiohttp.ClientSession() as session:
        preflight = {
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        }
        async with session.options(f"{query.url}/conversations", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            assert "Content-Type" in resp.headers["Access-Control-Allow-Headers"]
        async with session.options(
            f"{query.url}/conversations", headers={**preflight, "Origin": "https://evil.com"}
        ) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        async with session.get(
            f"{query.url}/conversations", headers={"Origin": "https://app.example.com", "Authorization": token("alice")}
        ) as resp:
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            # a browser client can read the paging cursor and, after a 429, when to retry
            assert set(resp.headers["Access-Control-Expose-Headers"].split(", ")) == {"X-Next-Before", "Retry-After"}
        async with session.get(f"{query.url}/openapi.json") as resp:
            doc = await resp.json()
        assert doc["openapi"] == "3.1.0" and doc == DOC
        for path in (
            "/conversations",
            "/conversations/{conversationId}",
            "/conversations/{conversationId}/messages",
            "/conversations/{conversationId}/participants",
            "/conversation/direct/{userId}",
            "/conversation",
        ):
            assert path in doc["paths"]
