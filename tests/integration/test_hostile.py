"""Hostile clients against real servers (docs/protocol.md section 5): one user's bad input or flood
costs that user alone: an error, a limit, a closed socket; never another user's message."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import redis.asyncio as aioredis

from devtools.proxy import TcpProxy

from ..harness import System, WsClient, token
from .test_resilience import echoes


async def rest(system: System, method: str, path: str, user: str = "alice", **kw) -> tuple[int, object]:
    query = system.of("query")[0]
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{query.url}{path}", headers={"Authorization": token(user)}, **kw) as resp:
            assert resp.content_type == "application/json", (path, resp.status, await resp.text())
            return resp.status, await resp.json()


async def bystander_chat(
    sender: WsClient, receiver: WsClient, cid: uuid.UUID, words: str, latencies: list[float]
) -> None:
    """20 messages, a tenth of a second apart, each timed from send to the other's socket."""
    loop = asyncio.get_running_loop()
    for i in range(20):
        started = loop.time()
        await sender.send_message(cid, f"{words} {i}", temp_id=f"b{i}")
        await receiver.wait_frame(type="new-message", tempMessageId=f"b{i}")
        latencies.append(loop.time() - started)
        await asyncio.sleep(0.1)


async def test_unstorable_or_malformed_input_gets_a_clear_error_and_stores_nothing(system):
    await system.start_all(query=True)
    alice = await system.connect("alice")
    cid = await system.conversation(["alice", "bob"])
    raw = '{{"action":"send-message","tempMessageId":"{t}","conversationId":"{c}","content":{v}}}'
    await alice.send_message(cid, "nul \u0000 inside", temp_id="nul")
    await alice.send(raw.format(t="sur", c=cid, v='"lone \\ud800 surrogate"'))
    await alice.send(raw.format(t="deep", c=cid, v="[" * 5000 + "]" * 5000))
    await alice.send(raw.format(t="big", c=cid, v=str(2**70)))
    for temp in ("nul", "sur"):
        frame = await alice.wait_frame(type="error", tempMessageId=temp)
        assert frame["code"] == "invalid_frame" and "content" in frame["message"]
    await alice.wait_for(lambda fs: len([f for f in fs if f.get("type") == "error"]) >= 4 or None)
    assert all(f["code"] == "invalid_frame" for f in alice.of_type("error"))

    bad_requests = [
        ("POST", "/conversation", {"json": {"recipientIdArr": ["bob\u0000"], "isGroup": False}}),
        ("POST", "/conversation", {"json": {"recipientIdArr": ["bob", "carol"], "isGroup": True, "title": "a\u0000"}}),
        ("POST", "/conversation", {"data": '{"recipientIdArr":["\\udc00"],"isGroup":false}'}),
        ("POST", "/conversation", {"data": "[" * 3000 + "]" * 3000}),
        ("POST", "/conversation", {"data": '{"recipientIdArr":["bob"],"isGroup":false,"n":' + str(2**80) + "}"}),
        ("GET", "/conversation/direct/bo%00b", {}),
        ("GET", f"/conversations/{cid}/messages?limit=%C2%B2&offset=0", {}),  # ²
        ("GET", f"/conversations/{cid}/messages?limit=10&offset=--5", {}),
        ("GET", f"/conversations/{cid}/messages?limit=10&beforeSeq={2**64}", {}),
    ]
    for method, path, kw in bad_requests:
        status, body = await rest(system, method, path, **kw)
        assert status == 400 and body["error"] == "bad_request", (path, status, body)
    assert await system.count_messages() == 0
    conn = await system.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM conversations") == 1
    finally:
        await conn.close()
    for service in system.services:
        assert '"request_failed"' not in service.output()  # no handler crashed


async def test_one_user_holds_at_most_10_sockets_across_gateways(system):
    await system.start_all(gateways=2)
    opened, refused = [], []
    for i in range(14):
        session = aiohttp.ClientSession()
        gateway = system.of("gateway")[i % 2]
        try:
            ws = await session.ws_connect(f"{gateway.url}/?Authorization={token('mallory')}")
            opened.append(WsClient(ws, session, "mallory"))
        except aiohttp.WSServerHandshakeError as exc:
            refused.append(exc.status)
            await session.close()
    assert len(opened) == 10 and refused == [429] * 4
    bystander = await system.connect("bob", gateway=1)  # another user is not affected
    await bystander.send({"action": "heartbeat"})
    await opened[0].close()
    await asyncio.sleep(0.5)
    again = await system.connect("mallory")  # a closed socket frees its place
    for client in [*opened[1:], again]:
        await client.close()


async def test_a_flood_from_one_user_costs_that_user_alone(system):
    await system.start_all()
    mallory = await system.connect("mallory")
    carol = await system.connect("carol")  # shares a conversation with mallory
    bob, dave = await system.connect("bob"), await system.connect("dave")
    victim = await system.conversation(["mallory", "carol"])
    bystanders = await system.conversation(["bob", "dave"])
    latencies: list[float] = []

    async def chat() -> None:
        await bystander_chat(bob, dave, bystanders, "hello", latencies)

    async def flood() -> None:
        for i in range(4000):
            if i % 2:
                frame = {"action": "read-messages", "conversationId": str(victim)}
            else:
                frame = {"action": "typing", "conversationId": str(uuid.uuid4())}
            try:
                await mallory.send(frame)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                return  # the gateway closed mallory's socket

    await asyncio.gather(chat(), flood())
    assert await mallory.wait_closed() == 1008
    assert any(f["code"] == "rate_limited" for f in mallory.of_type("error"))
    assert max(latencies) < 1.0, latencies  # the bystanders' messages did not wait for the flood
    await asyncio.sleep(1)
    receipts = [f for f in carol.frames if f.get("type") == "read-receipt"]
    assert len(receipts) <= 1  # nothing to read: no transaction, no receipt per read frame
    assert len(echoes(bob)) == 20 and not bob.of_type("error")


async def test_an_expired_token_closes_the_socket_and_authenticate_moves_that_moment(system):
    await system.start("writer")
    await system.start("notifier")
    await system.start("gateway", env={"CHAT_TOKEN_GRACE_SECONDS": "1"})
    short = await system.connect("alice", token_value=token("alice", ttl=2))
    kept = await system.connect("alice", token_value=token("alice", ttl=2))
    await kept.send({"action": "authenticate", "token": "not-a-token"})
    error = await kept.wait_frame(type="error", action="authenticate")
    assert error["code"] == "unauthorized"
    await kept.send({"action": "authenticate", "token": token("alice", ttl=60)})
    started = time.monotonic()
    while time.monotonic() - started < 4.5:  # heartbeats do not keep an expired token alive
        for client in (short, kept):
            if client.closed_code is None:
                await client.send({"action": "heartbeat"})
        await asyncio.sleep(0.5)
    assert await short.wait_closed(timeout=1) == 4001
    assert kept.closed_code is None  # its new token moved its end
    await kept.send({"action": "authenticate", "token": token("mallory", ttl=60)})
    assert await kept.wait_closed() == 1008  # a token of another user ends the connection


async def test_a_gateway_cut_off_from_redis_closes_its_sockets_with_1012(system):
    """Redis unreachable from one gateway for longer than a lease: its clients are told to
    reconnect (1012) rather than wait on sockets that events can no longer find."""
    proxy = await TcpProxy.start([("127.0.0.1", system.stack.redis.port)])
    try:
        await system.start_all(gateways=0)
        await system.start("gateway", env={"CHAT_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/{system.redis_db}"})
        alice = await system.connect("alice")
        client = aioredis.Redis.from_url(system.stack.redis.url(system.redis_db))
        try:
            assert 0 < await client.ttl("chat:registry:since") <= 60  # the marker lapses with the leases
        finally:
            await client.aclose()
        await proxy.close()  # Redis is out of the gateway's reach from now on
        assert await alice.wait_closed(timeout=45) == 1012
    finally:
        await proxy.close()


async def test_a_temp_id_reused_in_another_conversation_is_refused_not_echoed(system):
    await system.start_all()
    alice, bob, carol = [await system.connect(u) for u in ("alice", "bob", "carol")]
    with_bob = await system.conversation(["alice", "bob"])
    with_carol = await system.conversation(["alice", "carol"])
    await alice.send_message(with_bob, "for bob only", temp_id="k1")
    await bob.wait_frame(type="new-message", tempMessageId="k1")
    await alice.send_message(with_carol, "for carol", temp_id="k1")
    error = await alice.wait_frame(type="error", tempMessageId="k1")
    assert error["code"] == "invalid_frame"
    await asyncio.sleep(0.5)
    assert not carol.of_type("new-message")  # carol never sees the message meant for bob
    assert json.dumps(carol.frames).count("for bob only") == 0


async def test_rest_floods_get_429_per_user_and_cost_a_bystander_nothing(system):
    """One user calling REST in a loop: creating conversations (each notifies its members' sockets)
    and reading. Past their buckets they get 429 with Retry-After; the conversations they create,
    and so the frames their victims get, stay within the burst; a bystander's REST calls and
    messages go on as usual."""
    await system.start_all()
    await system.start("query", env={"CHAT_RATE_REST_READ": "5:20", "CHAT_RATE_REST_CREATE": "1:5"})
    query = system.of("query")[0].url
    bob, dave = await system.connect("bob"), await system.connect("dave")
    chat = await system.conversation(["bob", "dave"])

    async def call(session: aiohttp.ClientSession, user: str, method: str, path: str, **kw) -> tuple[int, dict]:
        async with session.request(method, query + path, headers={"Authorization": token(user)}, **kw) as resp:
            assert resp.content_type == "application/json"
            return resp.status, {"body": await resp.json(), "retry": resp.headers.get("Retry-After")}

    async with aiohttp.ClientSession() as session:
        body = {"recipientIdArr": ["bob", "dave"], "isGroup": True}
        created = [
            await call(session, "mallory", "POST", "/conversation", json={**body, "title": f"spam {i}"})
            for i in range(30)
        ]
        reads = [await call(session, "mallory", "GET", "/conversations") for _ in range(60)]
        # meanwhile the bystanders chat and read as usual
        for i in range(5):
            await bob.send_message(chat, f"still here {i}", temp_id=f"b{i}")
        for i in range(5):
            await dave.wait_frame(type="new-message", tempMessageId=f"b{i}")
        bystander = [await call(session, "dave", "GET", path) for path in ("/conversations", f"/conversations/{chat}")]

    statuses = [status for status, _ in created]
    assert 5 <= statuses.count(200) <= 7 and statuses.count(429) >= 23, statuses  # burst 5, then about 1 a second
    limited = next(extra for status, extra in created if status == 429)
    assert limited["body"]["error"] == "rate_limited" and int(limited["retry"]) >= 1
    assert [status for status, _ in reads].count(429) >= 30
    assert [status for status, _ in bystander] == [200, 200]
    conn = await system.db()
    try:
        spam = await conn.fetchval("SELECT count(*) FROM conversations WHERE created_by = 'mallory'")
    finally:
        await conn.close()
    assert spam == statuses.count(200)  # a refused call wrote nothing
    await asyncio.sleep(0.5)
    assert len(bob.of_type("conversation-created")) == spam  # nor reached anybody's socket
    assert len(echoes(bob)) == 5 and not bob.of_type("error")


async def test_a_flood_of_edits_and_reactions_and_searches_costs_that_user_alone(system):
    """Edits, deletes and reactions draw from the sender's send bucket: a user rewriting a message
    and toggling reactions in a loop is refused and then closed with 1008, the other member sees
    only the changes made within the bucket, and a bystander's messages and searches go on.
    Searches have a bucket of their own: past it the flooder gets 429, a bystander still 200."""
    await system.start_all()
    await system.start("query", env={"CHAT_RATE_REST_SEARCH": "1:5"})
    query = system.of("query")[0].url
    mallory, carol = await system.connect("mallory"), await system.connect("carol")
    bob, dave = await system.connect("bob"), await system.connect("dave")
    victim = await system.conversation(["mallory", "carol"])
    bystanders = await system.conversation(["bob", "dave"])
    await mallory.send_message(victim, "original", temp_id="m0")
    message_id = (await carol.wait_frame(type="new-message", tempMessageId="m0"))["messageId"]
    latencies: list[float] = []

    async def chat() -> None:
        await bystander_chat(bob, dave, bystanders, "findable", latencies)

    async def flood() -> None:
        for i in range(3000):
            if i % 2:
                frame = {"action": "react", "messageId": message_id, "emoji": f"e{i % 7}", "on": i % 4 == 1}
            else:
                frame = {"action": "edit-message", "messageId": message_id, "content": f"edit {i}"}
            try:
                await mallory.send(frame)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                return

    async def search(session: aiohttp.ClientSession, user: str, q: str) -> int:
        async with session.get(f"{query}/search", params={"q": q}, headers={"Authorization": token(user)}) as resp:
            await resp.read()
            return resp.status

    await asyncio.gather(chat(), flood())
    assert await mallory.wait_closed() == 1008
    assert any(f["code"] == "rate_limited" and f.get("messageId") == message_id for f in mallory.of_type("error"))
    assert max(latencies) < 1.0, latencies
    await asyncio.sleep(1)
    updates = carol.of_type("message-updated")
    # the send bucket's burst (100) and rate (20/s) over the flood's few seconds bound what got through
    assert 50 <= len(updates) <= 200, len(updates)
    conn = await system.db()
    try:
        change = await conn.fetchval("SELECT change FROM messages WHERE id = $1", uuid.UUID(message_id))
    finally:
        await conn.close()
    assert updates[-1]["change"] == change  # carol holds the message's latest state

    async with aiohttp.ClientSession() as session:
        flooded = [await search(session, "mallory", "edit") for _ in range(30)]
        assert flooded[:5] == [200] * 5 and flooded.count(429) >= 20, flooded
        assert await search(session, "bob", "findable") == 200
    assert len(echoes(bob)) == 20 and not bob.of_type("error")


async def test_a_peer_that_stops_answering_pings_is_dropped_and_a_live_one_is_kept(system):
    """A socket whose peer vanished (no close, no FIN: a laptop lid shut) is pinged after a quiet
    interval and dropped when it answers nothing, so it stops holding memory and deliveries; a
    quiet client that answers pings keeps its socket and gets its messages."""
    await system.start_all(gateways=0)
    gateway = await system.start("gateway", env={"CHAT_WS_HEARTBEAT_SECONDS": "2"})
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        f"GET /?Authorization={token('ghost')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    alive = await system.connect("alice")  # aiohttp's client answers pings
    started = time.monotonic()
    received = b""
    try:  # the ghost reads what comes (the pings) but never answers
        while chunk := await asyncio.wait_for(reader.read(1024), 10):
            received += chunk
    except ConnectionResetError:
        pass
    dropped_after = time.monotonic() - started
    writer.close()
    assert b"\x89\x00" in received  # it was pinged first
    assert 2 <= dropped_after <= 6, dropped_after  # quiet for an interval, then half an interval to answer
    await asyncio.sleep(3)  # more sweeps: the live client answers each ping
    assert alive.closed_code is None
    cid = await system.conversation(["alice", "bob"])
    await system.start("gateway")
    bob = await system.connect("bob", gateway=1)
    await bob.send_message(cid, "still there?", temp_id="t1")
    assert (await alive.wait_frame(type="new-message", tempMessageId="t1"))["content"] == "still there?"


async def test_a_ping_flood_costs_its_sender_the_connection_and_a_bystander_nothing(system):
    """Pings are frames too: they draw from the connection's frame budget, so a client that
    floods them (each would be answered with a pong) is closed with 1008 like any flooder,
    while another user's messages keep flowing."""
    await system.start_all()
    mallory, bob, dave = [await system.connect(u) for u in ("mallory", "bob", "dave")]
    bystanders = await system.conversation(["bob", "dave"])
    latencies: list[float] = []

    async def flood() -> None:
        for _ in range(5000):
            if mallory.ws.closed:
                return
            await mallory.ws.ping(b"x" * 100)

    await asyncio.gather(flood(), bystander_chat(bob, dave, bystanders, "hello", latencies))
    assert await mallory.wait_closed() == 1008
    assert len(latencies) == 20 and max(latencies) < 1.0, latencies
