"""The query service (docs/protocol.md section 3): PageNow's REST reads, cursors, unread counts.

Every route verifies the token (raw or ``Bearer``) and checks membership; a caller who is not
a participant gets 404, exactly as if the conversation did not exist.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from aio_pika.abc import AbstractConnection
from aiohttp import web

from shared import frames, topology
from shared.amqp import Broker, Unavailable
from shared.announce import publish_events
from shared.auth import AuthError, AuthUnavailable, TokenVerifier
from shared.db import Conn, Database
from shared.envelope import ConversationCreated
from shared.log import get_logger
from shared.ops import add_routes
from shared.registry import Registry, redis_client
from shared.service import fatal
from shared.settings import QuerySettings

from . import paging, requests, store, webapp
from .limits import Bucket, RestLimiter
from .middleware import MAX_BODY, cors, errors
from .reads import Reads
from .responses import ApiError, json_response, read_json

log = get_logger(__name__)


SEARCH_CONNECTIONS = 4
CUSTOM_PLANS = {"plan_cache_mode": "force_custom_plan"}


MessagesRead = Callable[[Conn, uuid.UUID, str], Awaitable[list[asyncpg.Record] | None]]


class Query:
    def __init__(
        self, settings: QuerySettings, db: Database, broker: Broker, verifier: TokenVerifier, reads: Reads
    ) -> None:
        self.settings = settings
        self.db = db
        self.reads = reads
        self.broker = broker
        self.verifier = verifier
        self.limiter = RestLimiter(settings.rest_limits)

    async def caller(self, request: web.Request, bucket: Bucket = Bucket.READ) -> str:
        """The verified user (else 401, or 503 while the JWKS is unreachable), once their ``bucket``
        allows one more request (else 429 with ``Retry-After``)."""
        try:
            user = await self.verifier.verify(request.headers.get("Authorization"))
        except AuthError as exc:
            raise ApiError(401, "unauthorized", str(exc)) from None
        except AuthUnavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        self.limiter.check(user, bucket)
        return user

    async def list_conversations(self, request: web.Request) -> web.Response:
        """``GET /conversations[?isRead=true|false][&limit=N][&before=cursor]``

        -> ``[{"conversationId","title","isGroup","sentAt","latestContent","senderId","participantId",
        "isRead","unreadCount","lastSeq","lastReadSeq","participantIds"}]``, newest first. With
        ``limit``, the header ``X-Next-Before`` carries the cursor of the next page, if any.
        """
        user = await self.caller(request)
        page = paging.conversation_list(request.query)
        rows = await self.reads.run(user, lambda conn: store.conversations(conn, user, page))
        body = [_conversation_item(r, user) for r in rows]
        headers = {}
        if page.limit is not None and len(rows) == page.limit:
            headers["X-Next-Before"] = paging.encode_cursor(rows[-1]["last_sent_at"], rows[-1]["id"])
        return json_response(body, headers=headers)

    async def get_conversation(self, request: web.Request) -> web.Response:
        """``GET /conversations/{conversationId}`` -> ``{"conversation_id","conversationId","title","isGroup",
        "participantId","participantIds","createdBy","createdAt","lastSeq"}``; 404 to non-participants."""
        user = await self.caller(request)
        cid = requests.parse_uuid(request.match_info["conversation_id"], "conversationId")
        row = await self.reads.run(user, lambda conn: store.conversation(conn, cid, user))
        if row is None:
            raise ApiError(404, "not_found", "no such conversation")
        participants = list(row["participant_ids"])
        return json_response(
            {
                "conversation_id": str(row["id"]),
                "conversationId": str(row["id"]),
                "title": row["title"],
                "isGroup": row["is_group"],
                "participantId": _other(participants, user),
                "participantIds": participants,
                "createdBy": row["created_by"],
                "createdAt": frames.iso_utc(row["created_at"]),
                "lastSeq": row["last_seq"],
            }
        )

    async def list_messages(self, request: web.Request) -> web.Response:
        """``GET /conversations/{id}/messages?limit=N&(offset=N|beforeSeq=N|afterSeq=N)[&order=asc|desc]``

        -> ``[{"messageId","conversationId","sentAt","senderId","content","seq"}]``.
        """
        page = paging.history(request.query)
        return await self._messages(request, lambda conn, cid, user: store.history(conn, cid, user, page))

    async def list_changes(self, request: web.Request) -> web.Response:
        """``GET /conversations/{id}/changes?after=N[&limit=L]`` -> ``[history item, ...]``: the messages
        whose latest change is after N, in change order, each once, as it is now (new, edited, deleted
        or reacted to). A client that reconnects applies them on top of what it has."""
        page = paging.changes(request.query)
        return await self._messages(request, lambda conn, cid, user: store.changes(conn, cid, user, page))

    async def _messages(self, request: web.Request, read: MessagesRead) -> web.Response:
        """The history items ``read`` finds in the conversation of the path, or 404 (``read``
        returns None when the caller is not in it, so nobody learns it exists)."""
        user = await self.caller(request)
        cid = requests.parse_uuid(request.match_info["conversation_id"], "conversationId")
        rows = await self.reads.run(user, lambda conn: read(conn, cid, user))
        if rows is None:
            raise ApiError(404, "not_found", "no such conversation")
        return json_response([_history_item(r) for r in rows])

    async def search(self, request: web.Request) -> web.Response:
        """``GET /search?q=words[&conversationId=id][&limit=L][&before=cursor]`` ->
        ``{"results": [history item, ...], "next": cursor | null}``: messages of the caller's
        conversations (or of the one named: 404 if the caller is not in it) whose current text holds
        every word of ``q``, inside longer words too, case-insensitively; newest sent first."""
        user = await self.caller(request, Bucket.SEARCH)
        page = paging.search(request.query)
        rows = await self.reads.run(user, lambda conn: store.search(conn, user, page), search=True)
        if rows is None:
            raise ApiError(404, "not_found", "no such conversation")
        more = len(rows) > page.limit
        rows = rows[: page.limit]
        last = rows[-1] if more else None
        cursor = paging.encode_search_cursor(last["sent_at"], last["conversation_id"], last["seq"]) if last else None
        return json_response({"results": [_history_item(r) for r in rows], "next": cursor})

    async def list_participants(self, request: web.Request) -> web.Response:
        """``GET /conversations/{id}/participants`` -> ``["alice", "bob"]`` (the caller included)."""
        user = await self.caller(request)
        cid = requests.parse_uuid(request.match_info["conversation_id"], "conversationId")
        users = await self.reads.run(user, lambda conn: store.participants(conn, cid, user))
        if not users:
            raise ApiError(404, "not_found", "no such conversation")
        return json_response(users)

    async def find_direct(self, request: web.Request) -> web.Response:
        """``GET /conversation/direct/{userId}`` -> ``{"conversationId": "..."}`` or ``null`` (never 404)."""
        user = await self.caller(request)
        other = requests.user_id(request.match_info["user_id"], "userId")
        cid = await self.reads.run(user, lambda conn: store.direct(conn, user, other))
        return json_response({"conversationId": str(cid)} if cid else None)

    async def create_conversation(self, request: web.Request) -> web.Response:
        """``POST /conversation`` with ``{"recipientIdArr":["bob"],"isGroup":false,"title":"..."}``
        -> ``{"conversationId": "..."}``; a direct pair's existing conversation is returned as is.
        Online participants of a new conversation get a ``conversation-created`` frame."""
        user = await self.caller(request, Bucket.CREATE)
        new = requests.new_conversation(await read_json(request), user)
        async with self.db.acquire() as conn:
            cid, created = await store.create(conn, user, new, datetime.now(timezone.utc))
        if created:
            participants = sorted([user, *new.recipients])
            await self.reads.changed(participants)  # their next reads see it, from wherever they read
            event = ConversationCreated(
                conversation_id=cid, title=new.title, is_group=new.is_group, participants=participants
            )
            try:
                await publish_events(self.broker, [event], self.settings.partitions)
            except Unavailable as exc:
                # the conversation exists; only the live notice is missed (clients see it on their next list)
                log.warning("conversation_created_not_announced", conversation_id=str(cid), error=str(exc))
        log.info(
            "conversation_created" if created else "conversation_found",
            conversation_id=str(cid),
            is_group=new.is_group,
            participants=len(new.recipients) + 1,
        )
        return json_response({"conversationId": str(cid)})


def _history_item(row: Any) -> dict[str, Any]:
    """``{"messageId","conversationId","sentAt","senderId","content","seq","editedAt","deleted",
    "reactions","change"}``: PageNow's fields and ours; a deleted message keeps its seq, time and
    sender, its content "" (docs/protocol.md section 6)."""
    return {
        "messageId": str(row["id"]),
        "conversationId": str(row["conversation_id"]),
        "sentAt": frames.iso_utc(row["sent_at"]),
        "senderId": row["sender_id"],
        "content": row["content"],
        "seq": row["seq"],
        "editedAt": frames.iso_utc(row["edited_at"]) if row["edited_at"] is not None else None,
        "deleted": row["deleted"],
        "reactions": msgspec.Raw(row["reactions"].encode()),  # stored as the JSON clients get
        "change": row["change"],
    }


def _other(participants: list[str], user: str) -> str | None:
    return next((p for p in participants if p != user), None)


def _conversation_item(row: Any, user: str) -> dict[str, Any]:
    participants = list(row["participant_ids"])
    last_seq, last_read = row["last_seq"], row["last_read_seq"]
    return {
        "conversationId": str(row["id"]),
        "title": row["title"],
        "isGroup": row["is_group"],
        "sentAt": frames.iso_utc(row["last_sent_at"]),
        "latestContent": row["last_content"],
        "senderId": row["last_sender_id"],
        "participantId": _other(participants, user),
        "isRead": last_read >= last_seq,
        "unreadCount": max(0, last_seq - last_read),
        "lastSeq": last_seq,
        "lastReadSeq": last_read,
        "participantIds": participants,
    }


OPENAPI = web.AppKey("openapi", bytes)


async def openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the hand-written OpenAPI 3.1 document of this service."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def openapi_document() -> bytes:
    return (Path(__file__).parent / "openapi.json").read_bytes()


def create_app(settings: QuerySettings) -> web.Application:
    app = web.Application(middlewares=[cors(settings.allowed_origins), errors], client_max_size=MAX_BODY)
    readiness = add_routes(app, "query", ops_port=settings.ops_port, host=settings.host)
    db = Database(settings.database_url, statement_cache=settings.db_statement_cache)

    async def setup(connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await topology.declare_events(channel, settings.partitions)  # conversation-created goes there
        await channel.close()

    broker = Broker(settings.amqp_urls, name=f"query:{settings.instance_id}", setup=setup, on_fatal=fatal)
    verifier = TokenVerifier(settings.jwt)
    standby = None
    redis = None
    if settings.database_read_url is not None and settings.redis is not None:
        standby = Database(settings.database_read_url, statement_cache=settings.db_statement_cache, standby=True)
        redis = redis_client(settings.redis)
    # searches plan each statement for its words (see query/store.py: search_sql), on a few
    # connections of their own: those bound how many run at once
    search_dbs = [
        Database(url, max_size=SEARCH_CONNECTIONS, settings=CUSTOM_PLANS, standby=standby_read)
        for url, standby_read in (
            (settings.database_url, False),
            (settings.database_read_url if standby is not None else None, True),
        )
        if url is not None
    ]
    reads = Reads(
        db,
        standby,
        Registry(redis) if redis is not None else None,
        search=(search_dbs[0], search_dbs[1] if standby is not None else None),
    )
    api = Query(settings, db, broker, verifier, reads)
    app[OPENAPI] = openapi_document()

    async def resources_ctx(app: web.Application) -> AsyncIterator[None]:
        for database in (db, standby, *search_dbs):
            if database is not None:
                database.start()
        reads.start()
        broker.start()
        yield
        await broker.close()
        await reads.close()
        for database in (db, standby, *search_dbs):
            if database is not None:
                await database.close()
        if redis is not None:
            await redis.aclose()
        await verifier.close()

    # not the broker: REST must stay up while it is down (clients catch up here), and
    # conversation-created notices are best effort
    readiness.checks.update(database=db.ping)
    app.cleanup_ctx.append(resources_ctx)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/conversations", api.list_conversations)
    app.router.add_get("/conversations/{conversation_id}", api.get_conversation)
    app.router.add_get("/conversations/{conversation_id}/messages", api.list_messages)
    app.router.add_get("/conversations/{conversation_id}/participants", api.list_participants)
    app.router.add_get("/conversations/{conversation_id}/changes", api.list_changes)
    app.router.add_get("/search", api.search)
    app.router.add_get("/conversation/direct/{user_id}", api.find_direct)
    app.router.add_post("/conversation", api.create_conversation)
    webapp.add_routes(app, settings)
    return app
