"""The real-time path against real servers: PageNow's frames, several instances, idempotency."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import uuid

import aiohttp
import pytest

from ..harness import System, WsClient, token

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def stored(system: System, cid: uuid.UUID) -> list[dict]:
    conn = await system.db()
    try:
        rows = await conn.fetch(
            "SELECT id, seq, sender_id, temp_message_id, content FROM messages WHERE conversation_id = $1 ORDER BY seq",
            cid,
        )
        return [dict(r) for r in rows]
    finally:
        await conn.close()


def echo_of(temp_id: str):
    return lambda frames: next(
        (f for f in frames if f.get("type") == "new-message" and f["tempMessageId"] == temp_id), None
    )


async def test_pagenow_frames_produce_pagenow_frames(system):
    await system.start_all()
    cid = await system.conversation(["alice", "bob"])
    alice, bob = await system.connect("alice"), await system.connect("bob")
    # exactly what PageNow's background.js sends
    await alice.send(
        json.dumps(
            {
                "action": "send-message",
                "tempMessageId": "1639811507123",
                "conversationId": str(cid),
                "content": "Hello Bob",
            }
        )
    )
    echo = await alice.wait_for(echo_of("1639811507123"))
    pagenow = {"type", "messageId", "tempMessageId", "conversationId", "senderId", "content", "sentAt"}
    assert set(echo) == pagenow | {"seq", "change"}  # PageNow's fields, and ours
    assert echo["tempMessageId"] == "1639811507123"
    assert echo["conversationId"] == str(cid) and echo["senderId"] == "alice" and echo["content"] == "Hello Bob"
    assert ISO_Z.match(echo["sentAt"]) and echo["seq"] == 1 and echo["change"] == 1
    uuid.UUID(echo["messageId"])
    assert await bob.wait_for(echo_of("1639811507123")) == echo

    await bob.send(json.dumps({"action": "read-messages", "conversationId": str(cid)}))
    assert await bob.wait_frame(type="read-messages") == {
        "type": "read-messages",
        "conversationId": str(cid),
        "userId": "bob",
        "lastReadSeq": 1,
    }
    assert await alice.wait_frame(type="read-receipt") == {
        "type": "read-receipt",
        "conversationId": str(cid),
        "userId": "bob",
        "lastReadSeq": 1,
    }
    await bob.send(json.dumps({"action": "heartbeat"}))
    await bob.send(json.dumps({"action": "typing", "conversationId": str(cid)}))
    assert await alice.wait_frame(type="typing") == {"type": "typing", "conversationId": str(cid), "userId": "bob"}
    await asyncio.sleep(0.3)
    assert not bob.of_type("typing") and not bob.of_type("error")  # typing is for the others; heartbeat is silent

    conn = await system.db()
    try:
        row = await conn.fetchrow(
            "SELECT last_read_seq FROM participants WHERE conversation_id=$1 AND user_id='bob'", cid
        )
        latest = await conn.fetchrow(
            "SELECT last_seq, last_content, last_sender_id FROM conversations WHERE id=$1", cid
        )
    finally:
        await conn.close()
    assert row["last_read_seq"] == 1
    assert dict(latest) == {"last_seq": 1, "last_content": "Hello Bob", "last_sender_id": "alice"}


async def test_resending_a_temp_message_id_stores_one_message(system):
    await system.start_all()
    cid = await system.conversation(["alice", "bob"])
    alice = await system.connect("alice")
    await alice.send_message(cid, "once", temp_id="same")
    first = await alice.wait_for(echo_of("same"))
    await alice.send_message(cid, "once", temp_id="same")
    await alice.send_message(cid, "once again", temp_id="same")
    await alice.wait_for(lambda fs: len([f for f in fs if f.get("tempMessageId") == "same"]) >= 3)
    echoes = [f for f in alice.frames if f.get("tempMessageId") == "same"]
    assert {(e["messageId"], e["seq"], e["content"]) for e in echoes} == {(first["messageId"], 1, "once")}
    assert len(await stored(system, cid)) == 1


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{bad json", "invalid_frame"),
        ({"action": "shout", "conversationId": "x"}, "unknown_action"),
        ({"action": "send-message", "tempMessageId": "t", "content": "hi"}, "missing_field"),
        ({"action": "send-message", "tempMessageId": "t", "conversationId": "CID", "content": " \n "}, "empty_content"),
        (
            {"action": "send-message", "tempMessageId": "t", "conversationId": "CID", "content": "x" * 1001},
            "content_too_long",
        ),
    ],
)
async def test_bad_frames_get_their_error_and_store_nothing(system, frame, code):
    await system.start_all()
    cid = await system.conversation(["alice", "bob"])
    alice = await system.connect("alice")
    if isinstance(frame, dict):
        frame = json.dumps({k: (str(cid) if v == "CID" else v) for k, v in frame.items()})
    await alice.send(frame)
    error = await alice.wait_frame(type="error")
    assert error["code"] == code
    await alice.send_message(cid, "a good one", temp_id="good")  # the socket stays usable
    await alice.wait_for(echo_of("good"))
    assert [m["temp_message_id"] for m in await stored(system, cid)] == ["good"]


async def test_non_participant_cannot_send_or_read(system):
    await system.start_all()
    cid = await system.conversation(["alice", "bob"])
    mallory, alice = await system.connect("mallory"), await system.connect("alice")
    await mallory.send_message(cid, "let me in", temp_id="m1")
    error = await mallory.wait_frame(type="error")
    assert error == {
        "type": "error",
        "code": "not_a_participant",
        "message": error["message"],
        "action": "send-message",
        "tempMessageId": "m1",
    }
    await mallory.send({"action": "read-messages", "conversationId": str(cid)})
    await mallory.wait_for(lambda fs: len([f for f in fs if f.get("type") == "error"]) == 2)
    assert mallory.of_type("error")[1]["code"] == "not_a_participant"
    assert mallory.of_type("error")[1]["action"] == "read-messages"
    await mallory.send_message(uuid.uuid4(), "anyone?", temp_id="m2")
    await mallory.wait_frame(type="error", tempMessageId="m2", code="unknown_conversation")
    assert await stored(system, cid) == []
    await asyncio.sleep(0.3)
    assert alice.frames == []  # nobody receives what was not stored


async def test_several_instances_every_connection_gets_every_event_in_order(system):
    # 2 gateways, 2 writers, 2 notifiers
    await system.start_all(gateways=2, writers=2, notifiers=2)
    senders = [f"user{i}" for i in range(10)]
    cid = await system.conversation(["watcher", *senders], title="all", group=True)
    watchers = [await system.connect("watcher", gateway=g) for g in (0, 1, 1)]  # 3 connections over both gateways
    clients = {u: await system.connect(u, gateway=i % 2) for i, u in enumerate(senders)}
    per_sender = 20

    async def send_all(user: str, client: WsClient) -> None:
        for i in range(per_sender):
            await client.send_message(cid, f"{user} #{i}", temp_id=f"{user}-{i}")

    await asyncio.gather(*(send_all(u, c) for u, c in clients.items()))
    total = per_sender * len(senders)
    for watcher in watchers:
        await watcher.wait_for(
            lambda fs: len({f["messageId"] for f in fs if f.get("type") == "new-message"}) >= total, timeout=30
        )
    rows = await stored(system, cid)
    assert [r["seq"] for r in rows] == list(range(1, total + 1))  # gapless
    for user in senders:  # each sender's messages in the order it sent them
        assert [r["temp_message_id"] for r in rows if r["sender_id"] == user] == [
            f"{user}-{i}" for i in range(per_sender)
        ]
    for watcher in watchers:
        seen = [f for f in watcher.frames if f.get("type") == "new-message"]
        by_id = {f["messageId"]: f for f in seen}
        assert {r["id"].__str__() for r in rows} == set(by_id)
        seqs = [f["seq"] for f in seen]
        assert seqs == sorted(seqs)  # each connection gets the conversation's events in seq order
    for client in clients.values():
        await client.wait_for(lambda fs: len([f for f in fs if f.get("type") == "new-message"]) >= total)
        assert not client.of_type("error")


async def test_a_user_with_connections_on_both_gateways_gets_reads_and_receipts_on_each(system):
    await system.start_all(gateways=2)
    cid = await system.conversation(["alice", "bob"])
    alices = [await system.connect("alice", gateway=g) for g in (0, 1)]
    bobs = [await system.connect("bob", gateway=g) for g in (1, 0, 1)]
    await alices[0].send_message(cid, "hi", temp_id="h")
    for c in alices + bobs:
        await c.wait_for(echo_of("h"))
    await bobs[0].send({"action": "read-messages", "conversationId": str(cid)})
    for bob in bobs:
        assert (await bob.wait_frame(type="read-messages"))["lastReadSeq"] == 1
    for alice in alices:
        assert (await alice.wait_frame(type="read-receipt"))["userId"] == "bob"


async def test_every_read_messages_frame_is_answered_on_every_connection_even_with_nothing_left(system):
    """PageNow's client waits for the ``read-messages`` answer to clear its unread state, so a
    read of an already-read conversation is answered too: to every connection of the reader, with
    where they stand, and with nothing written and no receipt to the others."""
    await system.start_all(gateways=2)
    cid = await system.conversation(["alice", "bob"])
    alice = await system.connect("alice")
    bobs = [await system.connect("bob", gateway=g) for g in (0, 1)]
    await alice.send_message(cid, "hi", temp_id="h")
    await bobs[0].wait_for(echo_of("h"))

    def reads(client: WsClient) -> list[dict]:
        return client.of_type("read-messages")

    await bobs[0].send({"action": "read-messages", "conversationId": str(cid)})
    for bob in bobs:
        await bob.wait_for(lambda fs, b=bob: len(reads(b)) >= 1)
    await alice.wait_frame(type="read-receipt")
    conn = await system.db()
    try:
        pointer = "SELECT xmin::text, last_read_seq FROM participants WHERE conversation_id=$1 AND user_id='bob'"
        before = await conn.fetchrow(pointer, cid)
        await bobs[1].send({"action": "read-messages", "conversationId": str(cid)})  # nothing left to read
        for bob in bobs:
            await bob.wait_for(lambda fs, b=bob: len(reads(b)) >= 2)
        assert await conn.fetchrow(pointer, cid) == before  # the row was not written again
    finally:
        await conn.close()
    for bob in bobs:
        assert (
            reads(bob) == [{"type": "read-messages", "conversationId": str(cid), "userId": "bob", "lastReadSeq": 1}] * 2
        )
    await asyncio.sleep(0.5)
    assert len(alice.of_type("read-receipt")) == 1  # the others hear of a read only when it moved
    # an empty conversation, never read, is answered too (where PageNow's client opens a new chat)
    empty = await system.conversation(["bob", "carol"])
    await bobs[0].send({"action": "read-messages", "conversationId": str(empty)})
    answer = await bobs[1].wait_frame(type="read-messages", conversationId=str(empty))
    assert answer["lastReadSeq"] == 0


async def test_oversized_frame_closes_with_1009(system):
    await system.start_all()
    client = await system.connect("alice")
    await client.send("x" * (64 * 1024 + 1))
    assert await client.wait_closed() == 1009


async def test_gateway_shutdown_closes_sockets_with_1001(system):
    await system.start_all()
    clients = [await system.connect("alice"), await system.connect("bob")]
    gateway = system.of("gateway")[0]
    gateway.proc.send_signal(signal.SIGTERM)
    assert [await c.wait_closed() for c in clients] == [1001, 1001]
    assert await asyncio.to_thread(gateway.proc.wait, 20) == 0


async def test_disallowed_origin_is_refused_before_the_upgrade(system):
    await system.start("writer")
    await system.start("notifier")
    gateway = await system.start("gateway", env={"CHAT_ALLOWED_ORIGINS": "https://app.example.com"})
    async with aiohttp.ClientSession() as session:
        url = f"{gateway.url}/?Authorization={token('alice')}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(url, origin="https://evil.example.com")
        assert info.value.status == 403
        ws = await session.ws_connect(url, origin="https://app.example.com")
        await ws.close()


async def _raw_websocket(port: int, user: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that completes the handshake and then reads nothing (a tiny receive window)."""
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
    writer.write(
        (
            f"GET /?Authorization={token(user)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _close_code(reader: asyncio.StreamReader) -> int:
    """Read server frames until the close frame; return its code."""
    while True:
        b0, b1 = await reader.readexactly(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(length)
        if b0 & 0x0F == 0x8:
            return int.from_bytes(payload[:2], "big")


async def test_a_client_that_cannot_keep_up_is_closed_with_1013(system):
    await system.start_all()
    # 100 senders x 100 frames of 1 KB = 10 MB for "slow", who reads nothing: twice what the kernel
    # (the gateway's send buffer autotunes up to tcp_wmem's 4 MB) and the gateway (64 KB in the
    # transport, 1 MB held back) can hold together. With 50 senders (5 MB) the kernel sometimes took
    # so much that the limit was never reached.
    senders = [f"s{i}" for i in range(100)]
    conversations = [await system.conversation([s, "slow"]) for s in senders]
    reader, writer = await _raw_websocket(system.of("gateway")[0].port, "slow")
    clients = [await system.connect(s) for s in senders]
    big = "x" * 1000

    async def flood(client: WsClient, cid: uuid.UUID) -> None:
        for i in range(100):
            await client.send_message(cid, big, temp_id=f"{client.user}-{i}")

    await asyncio.gather(*(flood(c, cid) for c, cid in zip(clients, conversations)))
    for client in clients:  # the senders themselves are served normally
        await client.wait_for(
            lambda fs: len([f for f in fs if f.get("type") == "new-message"]) >= 100 or None, timeout=60
        )
    assert await asyncio.wait_for(_close_code(reader), 60) == 1013
    writer.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{system.of('gateway')[0].url}/metrics") as resp:
            assert "chat_gateway_slow_consumers_closed_total 1.0" in await resp.text()


async def test_send_to_delivery_latency_is_measured_at_every_hop(system):
    """What users feel, as a metric: each gateway that hands a new-message frame to a socket
    records how long ago the send was accepted; the writer and the notifier record each hop."""
    await system.start_all(gateways=2)
    alice, bob = await system.connect("alice", gateway=0), await system.connect("bob", gateway=1)
    cid = await system.conversation(["alice", "bob"])
    for i in range(5):
        await alice.send_message(cid, f"hello {i}", temp_id=f"lat-{i}")
    await bob.wait_for(lambda fs: len([f for f in fs if f.get("type") == "new-message"]) >= 5 or None)
    await alice.wait_for(lambda fs: len([f for f in fs if f.get("type") == "new-message"]) >= 5 or None)
    gateways = system.of("gateway")
    counts = [await system.metric(g, "chat_message_delivery_seconds_count") for g in gateways]
    assert counts == [5, 5]  # alice's echoes on one gateway, bob's frames on the other
    assert await system.metric(system.of("writer")[0], "chat_writer_command_age_seconds_count") == 5
    assert await system.metric(system.of("notifier")[0], "chat_notifier_event_age_seconds_count") == 5
    total = sum([await system.metric(g, "chat_message_delivery_seconds_sum") for g in gateways])
    assert 0 < total < 10 * 5  # seconds, summed over ten deliveries: real, not absurd


async def test_the_gateway_serves_its_asyncapi_document(system):
    from ..protocol import DOCUMENT

    await system.start_all()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{system.of('gateway')[0].url}/asyncapi.yaml") as resp:
            assert resp.status == 200 and resp.content_type == "application/yaml"
            assert await resp.text() == DOCUMENT.read_text()


def updates_of(client: WsClient, cid: uuid.UUID) -> list[dict]:
    return [f for f in client.frames if f.get("type") == "message-updated" and f["conversationId"] == str(cid)]


async def test_edits_deletes_and_reactions_reach_every_connection_in_change_order(system):
    await system.start_all(gateways=2)
    cid = await system.conversation(["alice", "bob"])
    alice = await system.connect("alice")
    bobs = [await system.connect("bob", gateway=g) for g in (0, 1)]
    await alice.send_message(cid, "frist", temp_id="m1")
    await alice.send_message(cid, "oops", temp_id="m2")
    m1 = (await alice.wait_for(echo_of("m1")))["messageId"]
    m2 = (await alice.wait_for(echo_of("m2")))["messageId"]
    steps = [
        (alice, {"action": "edit-message", "messageId": m1, "content": "first"}),
        (bobs[0], {"action": "react", "messageId": m1, "emoji": "👍", "on": True}),
        (alice, {"action": "react", "messageId": m1, "emoji": "👍", "on": True}),
        (bobs[1], {"action": "react", "messageId": m1, "emoji": "👀", "on": True}),
        (bobs[0], {"action": "react", "messageId": m1, "emoji": "👍", "on": False}),
        (alice, {"action": "delete-message", "messageId": m2}),
        (alice, {"action": "delete-message", "messageId": m2}),  # again: changes nothing, announces nothing
    ]
    for i, (client, frame) in enumerate(steps):  # one at a time: from several sockets, they apply as they arrive
        await client.send(frame)
        await alice.wait_for(lambda fs, n=min(i + 1, 6): len(updates_of(alice, cid)) >= n)
    for client in [alice, *bobs]:
        await client.wait_for(lambda fs, c=client: len(updates_of(c, cid)) >= 6)
    await asyncio.sleep(0.5)
    for client in [alice, *bobs]:
        got = updates_of(client, cid)
        assert [f["change"] for f in got] == [3, 4, 5, 6, 7, 8]  # after the two messages' 1 and 2: gapless
        assert [(f["messageId"], f["seq"]) for f in got] == [(m1, 1)] * 5 + [(m2, 2)]
        assert [f["reactions"] for f in got[:5]] == [
            [],
            [{"emoji": "👍", "userIds": ["bob"]}],
            [{"emoji": "👍", "userIds": ["bob", "alice"]}],
            [{"emoji": "👍", "userIds": ["bob", "alice"]}, {"emoji": "👀", "userIds": ["bob"]}],
            [{"emoji": "👍", "userIds": ["alice"]}, {"emoji": "👀", "userIds": ["bob"]}],
        ]
        assert got[0]["content"] == "first" and ISO_Z.match(got[0]["editedAt"]) and not got[0]["deleted"]
        assert (got[5]["content"], got[5]["deleted"], got[5]["editedAt"]) == ("", True, None)
    rows = await stored(system, cid)
    assert [r["content"] for r in rows] == ["first", ""]
    assert not alice.of_type("error") and not any(b.of_type("error") for b in bobs)


async def test_changing_someone_elses_message_or_one_you_cannot_see_is_refused_with_its_id(system):
    await system.start_all()
    cid = await system.conversation(["alice", "bob"])
    alice, bob, carol = [await system.connect(u) for u in ("alice", "bob", "carol")]
    await alice.send_message(cid, "hers", temp_id="h")
    mid = (await bob.wait_for(echo_of("h")))["messageId"]
    await bob.send({"action": "edit-message", "messageId": mid, "content": "mine now"})
    await bob.send({"action": "delete-message", "messageId": mid})
    await carol.send({"action": "react", "messageId": mid, "emoji": "👍", "on": True})  # not in the conversation
    await carol.send({"action": "react", "messageId": str(uuid.uuid4()), "emoji": "👍", "on": True})  # no such message
    await bob.wait_for(lambda fs: len(bob.of_type("error")) >= 2)
    await carol.wait_for(lambda fs: len(carol.of_type("error")) >= 2)
    assert [(e["code"], e["action"], e["messageId"]) for e in bob.of_type("error")] == [
        ("not_allowed", "edit-message", mid),
        ("not_allowed", "delete-message", mid),
    ]
    assert [e["code"] for e in carol.of_type("error")] == ["unknown_message", "unknown_message"]  # no existence leak
    assert [r["content"] for r in await stored(system, cid)] == ["hers"]
    assert not updates_of(alice, cid)


async def test_a_change_to_a_message_of_an_earlier_version_is_sent_on_to_its_conversation(system):
    """Messages stored before ids carried their conversation's partition have random ids, which
    the gateway routes to any partition: the writer there sends the command on, and it is applied
    in its conversation, numbered in its change order (a message the same socket sends right
    after it may be stored first: it took one hop fewer)."""
    from shared import topology

    system.partitions = 8
    await system.start_all()
    cid = await system.conversation(["alice", "bob"])
    legacy = next(m for m in iter(uuid.uuid4, None) if topology.message_partition(m, 8) != topology.partition(cid, 8))
    conn = await system.db()
    try:
        await conn.execute(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, temp_message_id, content, sent_at, change)"
            " VALUES ($1, 1, $2, 'alice', 'old', 'from before', now(), 1)",
            cid,
            legacy,
        )
        await conn.execute("UPDATE conversations SET last_seq = 1, last_change = 1 WHERE id = $1", cid)
    finally:
        await conn.close()
    alice, bob = await system.connect("alice"), await system.connect("bob")
    await alice.send({"action": "edit-message", "messageId": str(legacy), "content": "from before, edited"})
    await alice.send_message(cid, "and a new one", temp_id="n")
    update = await bob.wait_frame(type="message-updated", messageId=str(legacy))
    assert update["content"] == "from before, edited"
    assert {update["change"], (await bob.wait_for(echo_of("n")))["change"]} == {2, 3}
    assert await system.metric(system.of("writer")[0], "chat_writer_commands_sent_on_total") == 1
