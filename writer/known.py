"""What a writer remembers of the conversations it handled lately: bounded, least recently used
dropped first, in conversations and in members (so a few huge groups cannot hold much memory).

Two uses (writer/store.py, writer/ephemeral.py): what is remembered there saves a database read,
and is either never stale (members: nobody adds or removes a member once a conversation exists)
or checked when it is used (``last_seq``: the write applies only if it still holds). Pure: no I/O.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from .plan import Conversation


class Known:
    def __init__(self, max_conversations: int, max_members: int) -> None:
        self.max_conversations = max_conversations
        self.max_members = max_members
        self.entries: OrderedDict[uuid.UUID, Conversation] = OrderedDict()  # least recently used first
        self.members = 0
        self.generation = 0  # moves on every clear(): what was read before it must not be put back

    def get(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Conversation]:
        """Those of ``ids`` remembered; each becomes the most recently used."""
        found = {}
        for cid in ids:
            conversation = self.entries.get(cid)
            if conversation is not None:
                self.entries.move_to_end(cid)
                found[cid] = conversation
        return found

    def put(self, conversations: Mapping[uuid.UUID, Conversation], generation: int | None = None) -> None:
        """Remember ``conversations`` (replacing what was there); ignored if read before a clear()."""
        if generation is not None and generation != self.generation:
            return
        for cid, conversation in conversations.items():
            before = self.entries.pop(cid, None)
            if before is not None:
                self.members -= len(before.members)
            self.entries[cid] = conversation
            self.members += len(conversation.members)
        while self.entries and (len(self.entries) > self.max_conversations or self.members > self.max_members):
            self.members -= len(self.entries.popitem(last=False)[1].members)

    def forget(self, ids: Iterable[uuid.UUID]) -> None:
        for cid in ids:
            before = self.entries.pop(cid, None)
            if before is not None:
                self.members -= len(before.members)

    def clear(self) -> None:
        self.entries.clear()
        self.members = 0
        self.generation += 1
