"""Edits, deletes, reactions and search against real servers (docs/protocol.md section 6): a client
that was away reaches the same state as one that never left; a delete erases; search finds words
inside words in any script, in the caller's conversations only."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import aiohttp

from ..harness import System, WsClient, token


class View:
    """What a client shows: every message as the latest frame or REST item about it left it."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        self.change = 0  # the highest change seen: where to catch up from

    def apply(self, item: dict[str, Any]) -> None:
        """A ``new-message`` or ``message-updated`` frame, or a history item: the newest change wins."""
        known = self.messages.get(item["messageId"], {})
        if item["change"] > known.get("change", 0):
            state = {**known, **{k: item[k] for k in ("seq", "content", "change")}}
            state["sender"] = item.get("senderId", known.get("sender"))  # message-updated does not repeat it
            state.update(deleted=item.get("deleted", False), reactions=item.get("reactions", []))
            state.update(edited=item.get("editedAt") is not None)
            self.messages[item["messageId"]] = state
        self.change = max(self.change, item["change"])

    def take(self, client: WsClient, cid: uuid.UUID) -> None:
        for frame in client.frames:
            if frame.get("type") in ("new-message", "message-updated") and frame["conversationId"] == str(cid):
                self.apply(frame)


async def rest(session: aiohttp.ClientSession, system: System, user: str, path: str, **params: str) -> Any:
    url = system.of("query")[0].url + path
    async with session.get(url, headers={"Authorization": token(user)}, params=params) as resp:
        assert resp.status == 200, (path, resp.status, await resp.text())
        return await resp.json()


async def catch_up(session: aiohttp.ClientSession, system: System, user: str, cid: uuid.UUID, view: View) -> int:
    """GET /changes from the highest change the view has, page after page; the pages read."""
    pages = 0
    while True:
        page = await rest(session, system, user, f"/conversations/{cid}/changes", after=str(view.change), limit="7")
        pages += 1
        if not page:
            return pages
        assert [m["change"] for m in page] == sorted(m["change"] for m in page)  # in change order
        for item in page:
            view.apply(item)


async def test_a_client_that_was_away_reaches_the_state_of_one_that_never_left(system):
    await system.start_all(gateways=2, query=True)
    people = ["alice", "bob", "carol"]
    cid = await system.conversation([*people, "dave"])
    actors = {p: await system.connect(p, gateway=i % 2) for i, p in enumerate(people)}
    live = await system.connect("dave", gateway=0)
    away = await system.connect("dave", gateway=1)
    rng = random.Random(27)
    sent: dict[str, list[str]] = {p: [] for p in people}  # each one's message ids, once echoed
    emoji = ["👍", "🎉", "あ", "😂"]

    async def act(step: int) -> None:
        who = rng.choice(people)
        client, mine = actors[who], sent[who]
        others = [m for p in people for m in sent[p]]
        roll = rng.random()
        if roll < 0.35 or not others:
            temp = f"{who}-{step}"
            await client.send_message(cid, f"{who} says {step}", temp_id=temp)
            echo = await client.wait_frame(type="new-message", tempMessageId=temp)
            mine.append(echo["messageId"])
        elif roll < 0.5 and mine:
            await client.send({"action": "edit-message", "messageId": rng.choice(mine), "content": f"edited {step}"})
        elif roll < 0.6 and mine:
            await client.send({"action": "delete-message", "messageId": rng.choice(mine)})
        else:
            on = rng.random() < 0.7
            await client.send(
                {"action": "react", "messageId": rng.choice(others), "emoji": rng.choice(emoji), "on": on}
            )
        await asyncio.sleep(0.02)

    async with aiohttp.ClientSession() as session:
        for step in range(30):
            await act(step)
        await asyncio.sleep(0.5)
        seen_before = View()
        seen_before.take(away, cid)
        await away.close()  # dave's second device goes away...
        for step in range(30, 80):
            await act(step)
        last = max(m for m in await _changes(system, cid))
        await live.wait_for(lambda fs: any(f.get("change") == last for f in fs))
        # ...and comes back: it catches up from the highest change it had seen
        back = View()
        back.messages, back.change = dict(seen_before.messages), seen_before.change
        pages = await catch_up(session, system, "dave", cid, back)
        assert pages > 1 and back.change == last
        stayed = View()
        stayed.take(live, cid)
        assert back.messages == stayed.messages  # message by message
        # and both match the database, which the history pages show as they are now
        history = await rest(session, system, "dave", f"/conversations/{cid}/messages", limit="100", afterSeq="0")
        truth = View()
        for item in history:
            truth.apply(item)
        assert truth.messages == stayed.messages
    states = list(stayed.messages.values())
    assert (
        any(m["deleted"] for m in states) and any(m["edited"] for m in states) and any(m["reactions"] for m in states)
    )
    # the client that never left saw every change, each once: the counter is gapless, and a gap
    # would have told it that it missed something
    numbers = [f["change"] for f in live.frames if f.get("type") in ("new-message", "message-updated")]
    assert sorted(numbers) == list(range(1, last + 1))


async def _changes(system: System, cid: uuid.UUID) -> list[int]:
    conn = await system.db()
    try:
        return [r["change"] for r in await conn.fetch("SELECT change FROM messages WHERE conversation_id = $1", cid)]
    finally:
        await conn.close()


async def test_a_delete_erases_the_text_from_every_table_and_from_search_at_once(system):
    await system.start_all(query=True)
    cid = await system.conversation(["alice", "bob"])
    alice = await system.connect("alice")
    secret = f"erase-me-{uuid.uuid4().hex}"
    await alice.send_message(cid, f"the code is {secret}", temp_id="s")
    await alice.send_message(cid, f"old words {secret}-too", temp_id="e")
    mid = (await alice.wait_frame(type="new-message", tempMessageId="s"))["messageId"]
    edited = (await alice.wait_frame(type="new-message", tempMessageId="e"))["messageId"]
    async with aiohttp.ClientSession() as session:
        found = await rest(session, system, "bob", "/search", q=secret)
        assert {r["messageId"] for r in found["results"]} == {mid, edited}
        await alice.send({"action": "delete-message", "messageId": mid})  # the latest but one
        await alice.send({"action": "edit-message", "messageId": edited, "content": "nothing to see"})  # the latest
        await alice.wait_for(lambda fs: len([f for f in fs if f.get("type") == "message-updated"]) >= 2)
        assert (await rest(session, system, "bob", "/search", q=secret))["results"] == []  # at once
        [listed] = await rest(session, system, "bob", "/conversations")
        assert listed["latestContent"] == "nothing to see"
    conn = await system.db()
    try:  # every text-like column of every table the project writes
        columns = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND data_type IN ('text', 'character varying', 'jsonb', 'json', 'ARRAY')"
        )
        assert {(c["table_name"], c["column_name"]) for c in columns} >= {
            ("messages", "content"),
            ("messages", "search_text"),
        }
        for c in columns:
            hits = await conn.fetchval(
                f'SELECT count(*) FROM "{c["table_name"]}" WHERE "{c["column_name"]}"::text LIKE $1', f"%{secret}%"
            )
            assert hits == 0, (c["table_name"], c["column_name"])
        # nor can any index find it (a trigram index scan, forced)
        await conn.execute("SET enable_seqscan = off")
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE search_text LIKE $1", f"%{secret}%") == 0
        row = await conn.fetchrow("SELECT content, deleted, seq FROM messages WHERE id = $1", uuid.UUID(mid))
        assert (row["content"], row["deleted"], row["seq"]) == ("", True, 1)  # a tombstone keeps its seq
    finally:
        await conn.close()


async def test_search_finds_words_inside_words_in_any_script_in_the_callers_conversations_only(system):
    await system.start_all(query=True)
    mine = await system.conversation(["alice", "bob"])
    group = await system.conversation(["alice", "bob", "carol"], title="g")
    others = await system.conversation(["carol", "dave"])
    alice, carol = await system.connect("alice"), await system.connect("carol")
    texts = [
        (alice, mine, "친구가 내일 온다"),  # Korean: the particle 가 attached to 친구 (friend)
        (alice, mine, "明日東京に行きます"),  # Japanese, no spaces
        (alice, group, "我们在北京见面"),  # Chinese
        (alice, group, "Meeting at the ÉCOLE tomorrow"),
        (alice, mine, "100% sure_thing"),
        (alice, mine, "one two three four five six seven eight nine ten eleven twelve"),
        (alice, mine, "one two three four five six seven eight nine ten eleven"),
        (carol, others, "친구 also in a conversation alice is not in"),
    ]
    ids = []
    for i, (client, cid, text) in enumerate(texts):
        await client.send_message(cid, text, temp_id=f"m{i}")
        ids.append((await client.wait_frame(type="new-message", tempMessageId=f"m{i}"))["messageId"])
    async with aiohttp.ClientSession() as session:

        async def found(q: str, **params: str) -> list[str]:
            body = await rest(session, system, "alice", "/search", q=q, **params)
            return [r["messageId"] for r in body["results"]]

        assert await found("친구") == [ids[0]]  # inside 친구가; carol's conversation is not alice's
        assert await found("東京") == [ids[1]]
        assert await found("京") == [ids[2], ids[1]]  # one character: 北京 has it too (newest first)
        assert await found("北京") == [ids[2]]
        assert await found("école") == [ids[3]]
        assert await found("EET") == [ids[3]]  # case-insensitive
        assert await found("meeting tomorrow") == [ids[3]]  # every word, in any order
        assert await found("meeting nowhere") == []
        assert await found("100%") == [ids[4]] and await found("e_thing") == [ids[4]]
        assert await found("s%g") == [] and await found("sur_") == []  # as wildcards they would have matched
        assert await found("친구", conversationId=str(mine)) == [ids[0]]
        assert await found("친구", conversationId=str(group)) == []
        # carol sees hers, and the group's
        carols = await rest(session, system, "carol", "/search", q="친구")
        assert [r["messageId"] for r in carols["results"]] == [ids[7]]
        # every word counts, past the ten the index looks up too ("e" is inside others: implied)
        twelve = "twelve eleven ten nine eight seven six five four three two one e"
        assert await found(twelve) == [ids[5]]
        assert await found(twelve.replace("twelve", "t")) == [ids[6], ids[5]]
        assert await found("twelve eleven three seven eight nine five four ten six two zzz") == []  # zzz is checked
        item = (await rest(session, system, "alice", "/search", q="東京"))["results"][0]
        assert item["conversationId"] == str(mine) and item["content"] == texts[1][2] and item["seq"] == 2


async def test_search_pages_newest_first_by_a_cursor_and_refuses_bad_queries(system):
    await system.start_all(query=True)
    cid = await system.conversation(["alice", "bob"])
    alice = await system.connect("alice")
    for i in range(25):
        await alice.send_message(cid, f"ping number {i}", temp_id=f"p{i}")
    await alice.wait_frame(type="new-message", tempMessageId="p24")
    async with aiohttp.ClientSession() as session:
        seen: list[str] = []
        params = {"q": "ping", "limit": "10"}
        while True:
            page = await rest(session, system, "bob", "/search", **params)
            seen += [r["content"] for r in page["results"]]
            if page["next"] is None:
                break
            params["before"] = page["next"]
        assert seen == [f"ping number {i}" for i in reversed(range(25))]
        query = system.of("query")[0].url
        for bad in (
            {"q": ""},
            {"q": "   "},
            {"q": "x" * 201},
            {"q": "a\x00b"},
            {},
            {"q": "ping", "limit": "0"},
            {"q": "ping", "before": "nonsense"},
            {"q": "ping", "conversationId": "x"},
        ):
            async with session.get(f"{query}/search", params=bad, headers={"Authorization": token("bob")}) as resp:
                assert resp.status == 400, bad
                assert (await resp.json())["error"] == "bad_request"
