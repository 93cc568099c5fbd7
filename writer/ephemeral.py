"""Typing: checked against membership, never stored, passed on as transient messages.

``chat.typing`` holds the typing the gateways saw; every writer consumes it and any may take any
message (typing has no order to keep). A typist who is a participant becomes ``typing-started``
for the notifiers on ``chat.typing.events``; one who is not gets ``error`` like any refused
command. Nothing here is worth a retry: when Postgres or the broker fails, the batch is dropped
(a typing indicator is stale within seconds) and the next one tries again.

Who is in a conversation never changes once it exists (no endpoint adds or removes a member), so
the members of the conversations typed in lately are kept (bounded, least recently typed in
dropped first) and typing in them costs no database read. An unknown conversation is never
kept: it is read again each time. A feature that changes membership must clear this.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import prometheus_client

from shared import envelope, topology
from shared.amqp import Poison, Unavailable
from shared.announce import Publisher
from shared.db import Database
from shared.envelope import Command, StartTyping
from shared.log import get_logger

from .known import Known
from .plan import Conversation, plan
from .store import conversations

log = get_logger(__name__)

KNOWN_MAX = 4_096  # conversations whose members are kept...
KNOWN_MEMBERS_MAX = 50_000  # ...and their members in all: a few MB at most, whatever the group sizes
KNOWN_HITS = prometheus_client.Counter(
    "chat_writer_typing_members_known_total", "Typing checked against members kept from earlier typing"
)
DROPPED = prometheus_client.Counter(
    "chat_writer_typing_dropped_total", "Typing dropped because Postgres or the broker failed", ["cause"]
)


class TypingChecker:
    """``chat.typing``'s consumer handler (shared.amqp.Handler)."""

    kind = "typing"

    def __init__(self, db: Database, publisher: Publisher, failures: tuple[type[BaseException], ...]) -> None:
        self.db = db
        self.publisher = publisher
        self.failures = failures  # what counts as the database failing (the writer's RETRY)
        self.known = Known(KNOWN_MAX, KNOWN_MEMBERS_MAX)  # least recently typed in dropped first

    def decode(self, body: bytes) -> list[Command]:
        return envelope.decode(envelope.Commands, body).items

    def encode(self, items: list[Command]) -> bytes:
        return envelope.encode(envelope.Commands(items=items))

    async def handle(self, commands: list[Command]) -> None:
        """Takes ``{"v":1,"items":[{"type":"typing","user_id":"bob","conversation_id":"…","origin":{…}}]}``;
        emits ``{"type":"typing-started","conversation_id":"…","user_id":"bob","participants":[…]}``,
        or ``command-rejected`` for a typist who is not a participant, to chat.typing.events."""
        typing = [c for c in commands if isinstance(c, StartTyping)]
        if len(typing) < len(commands):
            # only typing may take this path: a send here would be announced without being stored
            raise Poison(f"only typing travels {topology.TYPING}")
        started = time.perf_counter()
        try:
            known = await self._members({c.conversation_id for c in typing})
        except self.failures as exc:
            DROPPED.labels("database").inc(len(commands))
            log.warning("typing_dropped", typing=len(commands), error=exc.__class__.__name__)
            return
        events = plan(commands, known, {}, datetime.now(timezone.utc)).events  # typing writes nothing
        try:
            await self.publisher.publish(
                topology.TYPING_EVENTS, "", envelope.encode(envelope.Events(items=events)), persistent=False
            )
        except Unavailable as exc:
            DROPPED.labels("broker").inc(len(commands))
            log.warning("typing_dropped", typing=len(commands), error=str(exc)[:200])
            return
        log.debug("typing_checked", typing=len(commands), ms=round((time.perf_counter() - started) * 1000, 2))

    async def _members(self, ids: set[uuid.UUID]) -> dict[uuid.UUID, Conversation]:
        generation = self.known.generation
        found = self.known.get(ids)
        KNOWN_HITS.inc(len(found))
        missing = [cid for cid in ids if cid not in found]
        if missing:
            async with self.db.acquire() as conn:
                read = await conversations(conn, missing)
            fresh = {cid: Conversation(0, c.members) for cid, c in read.items()}  # members only
            self.known.put(fresh, generation)
            found.update(fresh)
        return found

    async def rejected(self, command: Command, reason: str) -> None:
        """A culprit is set aside in chat.dead; nobody waits for an answer to typing."""
