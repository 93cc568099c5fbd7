"""What a batch of commands does, decided without I/O: the writer's pure core.

:func:`plan` takes the commands in order, what the database said about their conversations
(each one's ``last_seq``, ``last_change``, members and read pointers), the messages already
stored under the batch's idempotency keys and the messages the batch's edits, deletes and
reactions name, and returns every decision: the rows to insert, the messages to change, each
conversation's new counters and latest message, the read pointers to move, the events to
announce and why any command was refused. ``store.py`` reads the inputs and writes the outputs
around it.

Every stored message and every edit, delete or reaction change takes the conversation's next
``change``, in command order, so ``change`` is gapless per conversation like ``seq``. A command
that changes nothing (an edit to the same text, deleting a deleted message, a reaction already in
that state) takes no number and announces nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

import msgspec

from shared.envelope import (
    Command,
    CommandRejected,
    DeleteMessage,
    EditMessage,
    Event,
    MessageCommand,
    MessageStored,
    MessageUpdated,
    React,
    Reaction,
    ReadMessages,
    ReadUpdated,
    SendMessage,
    StartTyping,
    TypingStarted,
)
from shared.frames import MAX_CONTENT, MAX_REACTIONS, MAX_TEMP_ID, emoji_problem
from shared.topology import message_partition, new_message_id, partition

UNRESOLVED = -1  # a ReadUpdated's pointer until the write returns it


@dataclass(frozen=True)
class Conversation:
    last_seq: int
    members: tuple[str, ...]
    read: Mapping[str, int] = field(default_factory=dict)  # each member's last_read_seq
    last_change: int = 0


@dataclass(frozen=True)
class Stored:
    """A message as stored: found by its ``(sender_id, temp_message_id)`` (a resend), or by its id
    (the target of an edit, a delete or a reaction)."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    sender_id: str
    temp_message_id: str
    content: str
    sent_at: datetime
    change: int = 0
    edited_at: datetime | None = None
    deleted: bool = False
    reactions: tuple[Reaction, ...] = ()


@dataclass(frozen=True)
class Latest:
    seq: int
    message_id: uuid.UUID
    sent_at: datetime
    sender_id: str
    content: str


@dataclass
class Plan:
    events: list[Event] = field(default_factory=list)
    new_messages: list[Stored] = field(default_factory=list)
    updated: dict[uuid.UUID, Stored] = field(default_factory=dict)  # existing messages, as they end
    latest: dict[uuid.UUID, Latest] = field(default_factory=dict)
    latest_content: dict[uuid.UUID, str] = field(default_factory=dict)  # the latest message edited or deleted
    last_change: dict[uuid.UUID, int] = field(default_factory=dict)  # each changed conversation's counter
    read_to: dict[tuple[uuid.UUID, str], int] = field(default_factory=dict)
    stored: int = 0
    changed: int = 0  # edits, deletes and reaction changes applied
    duplicates: int = 0
    rejected: int = 0

    @property
    def writes(self) -> bool:
        return bool(self.new_messages or self.read_to or self.updated)

    def resolved(self, pointers: Mapping[tuple[uuid.UUID, str], int]) -> list[Event]:
        """The events, each ReadUpdated that moved a pointer given the pointer the write returned."""
        return [
            msgspec.structs.replace(e, last_read_seq=pointers[(e.conversation_id, e.user_id)])
            if isinstance(e, ReadUpdated) and e.last_read_seq == UNRESOLVED
            else e
            for e in self.events
        ]


def reject(cmd: Command, code: str, message: str) -> CommandRejected:
    return CommandRejected(
        origin=cmd.origin,
        code=code,
        message=message,
        action=str(cmd.__struct_config__.tag),  # the command's tag is its action, e.g. "send-message"
        temp_message_id=cmd.temp_message_id if isinstance(cmd, SendMessage) else None,
        conversation_id=cmd.conversation_id,
        message_id=cmd.message_id if isinstance(cmd, MessageCommand) else None,
    )


def refusal(cmd: Command) -> tuple[str, str] | None:
    """The gateway validates frames; the writer does not trust its input either. (code, message)."""
    if isinstance(cmd, SendMessage) and not 1 <= len(cmd.temp_message_id) <= MAX_TEMP_ID:
        return "invalid_frame", f"tempMessageId must be a string of 1 to {MAX_TEMP_ID} characters"
    if isinstance(cmd, SendMessage | EditMessage):
        if not cmd.content.rstrip():
            return "empty_content", "content is empty"
        if len(cmd.content.rstrip()) > MAX_CONTENT:
            return "content_too_long", f"content is longer than {MAX_CONTENT} characters"
    if isinstance(cmd, React) and (problem := emoji_problem(cmd.emoji)) is not None:
        return "invalid_frame", problem
    return None


UNKNOWN_MESSAGE = ("unknown_message", "no such message")


class _Batch:
    """The batch's running state: counters and messages as the commands before have left them."""

    def __init__(
        self,
        conversations: Mapping[uuid.UUID, Conversation],
        existing: Mapping[tuple[str, str], Stored],
        targets: Mapping[uuid.UUID, Stored],
        now: datetime,
        new_id: Callable[[uuid.UUID], uuid.UUID],
    ) -> None:
        self.out = Plan()
        self.conversations = conversations
        self.last_seq = {cid: c.last_seq for cid, c in conversations.items()}
        self.last_change = {cid: c.last_change for cid, c in conversations.items()}
        self.known = dict(existing)  # grows as the batch stores: a second copy in the batch is a duplicate
        self.messages = dict(targets)  # the named messages, as the batch's changes leave them
        self.now = now
        self.new_id = new_id

    def next_change(self, cid: uuid.UUID) -> int:
        self.last_change[cid] += 1
        self.out.last_change[cid] = self.last_change[cid]
        return self.last_change[cid]

    def refuse(self, cmd: Command, code: str, message: str) -> None:
        self.out.events.append(reject(cmd, code, message))
        self.out.rejected += 1

    def send(self, cmd: SendMessage, members: list[str]) -> None:
        cid = cmd.conversation_id
        before = self.known.get((cmd.user_id, cmd.temp_message_id))
        if before is not None and before.conversation_id != cid:
            self.refuse(cmd, "invalid_frame", "tempMessageId was already used in another conversation")
            return
        if before is not None:
            self.out.duplicates += 1
            self.out.events.append(_announce(self.messages.get(before.id, before), members, cmd))
            return
        seq = self.last_seq[cid] + 1
        self.last_seq[cid] = seq
        message = Stored(
            id=self.new_id(cid),
            conversation_id=cid,
            seq=seq,
            sender_id=cmd.user_id,
            temp_message_id=cmd.temp_message_id,
            content=cmd.content.rstrip(),
            sent_at=self.now,
            change=self.next_change(cid),
        )
        self.known[(cmd.user_id, cmd.temp_message_id)] = message
        out = self.out
        out.new_messages.append(message)
        out.latest[cid] = Latest(seq, message.id, self.now, cmd.user_id, message.content)
        out.latest_content.pop(cid, None)  # the latest is this new one now
        out.read_to[(cid, cmd.user_id)] = max(out.read_to.get((cid, cmd.user_id), 0), seq)  # read own message
        out.events.append(_announce(message, members, cmd))
        out.stored += 1

    def read(self, cmd: ReadMessages, members: list[str]) -> None:
        cid, out = cmd.conversation_id, self.out
        key = (cid, cmd.user_id)
        read = max(self.conversations[cid].read.get(cmd.user_id, 0), out.read_to.get(key, 0))
        if self.last_seq[cid] <= read:
            # nothing new to read: no write and no receipt to the others, but the reader's
            # connections are still answered with where they stand (PageNow answered every read)
            out.events.append(
                ReadUpdated(conversation_id=cid, user_id=cmd.user_id, last_read_seq=read, participants=[cmd.user_id])
            )
            return
        out.read_to[key] = self.last_seq[cid]
        out.events.append(
            ReadUpdated(conversation_id=cid, user_id=cmd.user_id, last_read_seq=UNRESOLVED, participants=members)
        )

    def change(self, cmd: MessageCommand, target: Stored, members: list[str]) -> None:
        """An edit, a delete or a reaction change of ``target``, a message of the conversation."""
        if isinstance(cmd, EditMessage | DeleteMessage) and target.sender_id != cmd.user_id:
            self.refuse(cmd, "not_allowed", "only its sender may change or delete a message")
            return
        if target.deleted and not isinstance(cmd, DeleteMessage):
            self.refuse(cmd, *UNKNOWN_MESSAGE)  # a tombstone is not edited or reacted to
            return
        after = _apply(cmd, target, self.now)
        if isinstance(after, str):
            self.refuse(cmd, "not_allowed", after)
            return
        if after is None:
            return  # already so: nothing changes, nothing is announced
        cid = target.conversation_id
        after = replace(after, change=self.next_change(cid))
        self.messages[target.id] = after  # (a message of this very batch is never a target: its id is not out yet)
        self.out.updated[after.id] = after
        if after.seq == self.last_seq[cid] and after.content != target.content:
            self.out.latest_content[cid] = after.content  # the conversation list shows the latest as it is now
        self.out.changed += 1
        self.out.events.append(_updated(after, members))


def plan(
    commands: list[Command],
    conversations: Mapping[uuid.UUID, Conversation],
    existing: Mapping[tuple[str, str], Stored],
    now: datetime,
    new_id: Callable[[uuid.UUID], uuid.UUID] = new_message_id,
    targets: Mapping[uuid.UUID, Stored] | None = None,
) -> Plan:
    """Apply ``commands`` in order to the state read from the database; decide everything.

    ``targets`` are the messages the batch's edits, deletes and reactions name, by id (those that
    exist); a command on one names its conversation only once it is known (``conversation_id``),
    from the target or from the writer that sent it on."""
    batch = _Batch(conversations, existing, targets or {}, now, new_id)
    for cmd in commands:
        target = None
        if isinstance(cmd, MessageCommand):
            target = batch.messages.get(cmd.message_id)
            if target is None or (cmd.conversation_id is not None and cmd.conversation_id != target.conversation_id):
                batch.refuse(cmd, *UNKNOWN_MESSAGE)
                continue
            cid = target.conversation_id
        else:
            cid = cmd.conversation_id
        conversation = conversations.get(cid)
        if conversation is None:
            if target is not None:
                batch.refuse(cmd, *UNKNOWN_MESSAGE)
            else:
                batch.refuse(cmd, "unknown_conversation", "no such conversation")
            continue
        if cmd.user_id not in conversation.members:
            if target is not None:
                batch.refuse(cmd, *UNKNOWN_MESSAGE)  # no existence leak: as if there were no such message
            else:
                batch.refuse(cmd, "not_a_participant", "you are not a participant of this conversation")
            continue
        problem = refusal(cmd)
        if problem is not None:
            batch.refuse(cmd, *problem)
            continue
        members = list(conversation.members)
        if isinstance(cmd, SendMessage):
            batch.send(cmd, members)
        elif isinstance(cmd, ReadMessages):
            batch.read(cmd, members)
        elif isinstance(cmd, StartTyping):
            batch.out.events.append(TypingStarted(conversation_id=cid, user_id=cmd.user_id, participants=members))
        elif target is not None:
            batch.change(cmd, target, members)
    return batch.out


def elsewhere(
    commands: list[Command], named: Mapping[uuid.UUID, Stored], partitions: int
) -> tuple[list[Command], list[Command]]:
    """Split off the commands on a message whose conversation is in another partition than the
    one its id routed it to (a message of an earlier version, whose id is random): they go on to
    the right partition, their conversation named, and are handled there, in order."""
    here: list[Command] = []
    onward: list[Command] = []
    for cmd in commands:
        target = named.get(cmd.message_id) if isinstance(cmd, MessageCommand) else None
        if (
            isinstance(cmd, MessageCommand)
            and target is not None
            and cmd.conversation_id is None
            and partition(target.conversation_id, partitions) != message_partition(cmd.message_id, partitions)
        ):
            onward.append(msgspec.structs.replace(cmd, conversation_id=target.conversation_id))
        else:
            here.append(cmd)
    return here, onward


def _apply(cmd: MessageCommand, message: Stored, now: datetime) -> Stored | str | None:
    """``message`` after ``cmd``; None if it changes nothing; a refusal's reason if not allowed."""
    if isinstance(cmd, EditMessage):
        content = cmd.content.rstrip()
        return None if content == message.content else replace(message, content=content, edited_at=now)
    if isinstance(cmd, DeleteMessage):
        # the text and the reactions go; the seq, sender and time stay, as a tombstone
        return None if message.deleted else replace(message, content="", deleted=True, reactions=())
    reactions = list(message.reactions)
    index = next((i for i, r in enumerate(reactions) if r.emoji == cmd.emoji), None)
    if cmd.on:
        if index is None:
            if len(reactions) >= MAX_REACTIONS:
                return f"at most {MAX_REACTIONS} different reactions on a message"
            reactions.append(Reaction(emoji=cmd.emoji, user_ids=[cmd.user_id]))
        elif cmd.user_id in reactions[index].user_ids:
            return None
        else:
            reactions[index] = Reaction(emoji=cmd.emoji, user_ids=[*reactions[index].user_ids, cmd.user_id])
    else:
        if index is None or cmd.user_id not in reactions[index].user_ids:
            return None
        left = [u for u in reactions[index].user_ids if u != cmd.user_id]
        if left:
            reactions[index] = Reaction(emoji=cmd.emoji, user_ids=left)
        else:
            del reactions[index]
    return replace(message, reactions=tuple(reactions))


def _announce(message: Stored, members: list[str], cmd: SendMessage) -> MessageStored:
    return MessageStored(
        message_id=message.id,
        conversation_id=message.conversation_id,
        seq=message.seq,
        sender_id=message.sender_id,
        temp_message_id=message.temp_message_id,
        content=message.content,
        sent_at=message.sent_at,
        participants=members,
        accepted_at=cmd.accepted_at,
        trace=cmd.trace,
        change=message.change,
    )


def _updated(message: Stored, members: list[str]) -> MessageUpdated:
    return MessageUpdated(
        conversation_id=message.conversation_id,
        message_id=message.id,
        seq=message.seq,
        change=message.change,
        content=message.content,
        edited_at=message.edited_at,
        deleted=message.deleted,
        reactions=list(message.reactions),
        participants=members,
    )
