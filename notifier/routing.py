"""Delivery planning: which frame goes to which gateway instance, for which users. Pure.

``plan`` turns a batch of events into at most one Deliveries batch per gateway instance.
A ``None`` instance means broadcast (every gateway, used while the registry is not trusted).

The notifier, not the gateway, renders the clients' frames, deliberately: each frame is encoded
once here and every gateway writes it to its sockets as is, without decoding events or knowing
their types, so the gateway's per-frame cost stays one copy to a socket.
"""

from __future__ import annotations

from collections import defaultdict

from shared import frames
from shared.envelope import (
    CommandRejected,
    ConversationCreated,
    Delivery,
    Event,
    MessageStored,
    MessageUpdated,
    ReadUpdated,
    TypingStarted,
)

BROADCAST: None = None


def recipients(event: Event) -> list[tuple[str, list[str]]]:
    """The frames an event produces, each with the users who get it."""
    if isinstance(event, MessageStored):
        frame = frames.new_message(
            message_id=event.message_id,
            temp_message_id=event.temp_message_id,
            conversation_id=event.conversation_id,
            sender_id=event.sender_id,
            content=event.content,
            sent_at=event.sent_at,
            seq=event.seq,
            change=event.change or None,
        )
        return [(frame, event.participants)]
    if isinstance(event, MessageUpdated):
        updated = frames.message_updated(
            conversation_id=event.conversation_id,
            message_id=event.message_id,
            seq=event.seq,
            change=event.change,
            content=event.content,
            edited_at=event.edited_at,
            deleted=event.deleted,
            reactions=[{"emoji": r.emoji, "userIds": r.user_ids} for r in event.reactions],
        )
        return [(updated, event.participants)]
    if isinstance(event, ReadUpdated):
        others = [u for u in event.participants if u != event.user_id]
        own = frames.read_messages(
            conversation_id=event.conversation_id, user_id=event.user_id, last_read_seq=event.last_read_seq
        )
        receipt = frames.read_receipt(
            conversation_id=event.conversation_id, user_id=event.user_id, last_read_seq=event.last_read_seq
        )
        return [(own, [event.user_id]), (receipt, others)]
    if isinstance(event, TypingStarted):
        return [
            (
                frames.typing(conversation_id=event.conversation_id, user_id=event.user_id),
                [u for u in event.participants if u != event.user_id],
            )
        ]
    if isinstance(event, ConversationCreated):
        return [
            (
                frames.conversation_created(
                    conversation_id=event.conversation_id,
                    title=event.title,
                    is_group=event.is_group,
                    participant_ids=event.participants,
                ),
                event.participants,
            )
        ]
    return []


def users_of(events: list[Event]) -> list[str]:
    """Every user whose connections must be looked up for ``events``, once each.

    The same audiences as ``recipients``, without rendering any frame.
    """
    seen: dict[str, None] = {}
    for event in events:
        if isinstance(event, TypingStarted):
            seen.update(dict.fromkeys(u for u in event.participants if u != event.user_id))
        elif not isinstance(event, CommandRejected):
            seen.update(dict.fromkeys(event.participants))
    return list(seen)


def touched(events: list[Event]) -> list[str]:
    """Users whose REST reads these events change, once each: they read from the primary for a
    while (shared/registry.py, ``chat:fresh:<user>``), so a standby behind it cannot hide them."""
    seen: dict[str, None] = {}
    for event in events:
        if isinstance(event, MessageStored | MessageUpdated | ConversationCreated):
            seen.update(dict.fromkeys(event.participants))
        elif isinstance(event, ReadUpdated):
            seen[event.user_id] = None  # only the reader's own view (lastReadSeq, unread counts) moved
    return list(seen)


def plan(events: list[Event], located: dict[str, set[str]], trusted: bool) -> dict[str | None, list[Delivery]]:
    """Group the frames of ``events`` by gateway instance, keeping event order within each."""
    out: dict[str | None, list[Delivery]] = defaultdict(list)
    for event in events:
        if isinstance(event, CommandRejected):
            frame = frames.error(
                event.code,
                event.message,
                action=event.action,
                temp_message_id=event.temp_message_id,
                message_id=str(event.message_id) if event.message_id is not None else None,
            )
            out[event.origin.instance].append(Delivery(frame=frame, users=[], conn=event.origin.conn))
            continue
        accepted_at = event.accepted_at if isinstance(event, MessageStored) else None
        trace = event.trace if isinstance(event, MessageStored) else None
        for frame, users in recipients(event):
            if not users:
                continue
            if not trusted:
                out[BROADCAST].append(Delivery(frame=frame, users=list(users), accepted_at=accepted_at, trace=trace))
                continue
            per_instance: dict[str, list[str]] = defaultdict(list)
            for user in users:
                for instance in sorted(located.get(user, ())):
                    per_instance[instance].append(user)
            for instance, instance_users in per_instance.items():
                out[instance].append(Delivery(frame=frame, users=instance_users, accepted_at=accepted_at, trace=trace))
    return dict(out)
