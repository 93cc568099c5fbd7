"""The RabbitMQ topology, declared in one place (docs/events.md draws it).

- ``chat.commands`` (direct) -> ``chat.commands.<p>``: gateway -> writer, one quorum queue per
  partition ``p = partition(conversation_id)``, single active consumer, so one writer at a time
  stores a conversation's messages, in the order they were published.
- ``chat.events`` (direct) -> ``chat.events.<p>``: writer/query -> notifier, partitioned the same
  way, so every connection receives a conversation's events in ``seq`` order.
- ``chat.deliveries`` (direct) -> ``chat.gateway.<instance>``: notifier -> the gateway holding
  the recipients' sockets. An exclusive queue of the gateway's own connection: it lives on the
  node that connection is on, and goes with it (the gateway then closes its sockets with 1012 and
  declares it again on its next connection, wherever that is).
- ``chat.broadcast`` (fanout) -> every gateway queue: used while the Redis registry is not
  trustworthy (just after Redis lost its data, or a fail-over), so nothing is missed meanwhile.
- ``chat.typing`` and ``chat.typing.events`` (each an exchange and its one queue, ``<name>.v2``):
  typing, gateway -> writer (which checks membership) -> notifier. Quorum queues whose messages
  expire after a few seconds and drop their oldest past a bound: typing needs no order, and a stale
  one is worth nothing, but the queue must outlive the loss of any one broker node. Every writer
  (notifier) consumes the one queue; any may take any.
- ``chat.dead`` (fanout) -> ``chat.dead``: poison messages and those redelivered too often.
- ``chat.partition-count``: an empty quorum queue whose ``x-max-length`` records
  ``CHAT_PARTITIONS``. RabbitMQ refuses to redeclare a queue with a different value, so a service
  started with another partition count is refused (:class:`PartitionsMismatch`) instead of
  silently sending a conversation's commands to a second queue, out of order.

Every quorum queue is declared with three replicas and its leader on the least loaded node
(``x-quorum-initial-group-size``, ``x-queue-leader-locator``), so leaders spread over a cluster;
on one node both are moot. A queue an earlier version declared without them keeps what it has
(RabbitMQ refuses to redeclare a queue with other arguments; docs/operations.md says how to grow
its replicas).
"""

from __future__ import annotations

import os
import uuid
import zlib

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.exceptions import AMQPError, ChannelPreconditionFailed
from pamqp.common import FieldTable

from .amqp import DEAD, Fatal
from .envelope import Command, MessageCommand
from .log import get_logger

log = get_logger(__name__)

COMMANDS = "chat.commands"
EVENTS = "chat.events"
DELIVERIES = "chat.deliveries"
BROADCAST = "chat.broadcast"
PARTITIONS_MARKER = "chat.partition-count"
LEGACY_PARTITIONS_MARKER = "chat.partitions"  # a classic queue: gone with its node; replaced by the above
TYPING = "chat.typing"
TYPING_EVENTS = "chat.typing.events"
TYPING_TTL_MS = 5_000  # a typing indicator older than this is worth nothing
TYPING_MAX = 10_000  # messages a typing queue holds before it drops its oldest
DELIVERY_LIMIT = 20  # a message redelivered this often (e.g. it crashes its consumer) is dead-lettered
REPLICAS = 3  # quorum queue members: one node of three may fail with nothing lost and no pause
# Arguments that place a quorum queue: RabbitMQ refuses to redeclare a queue with other ones, so a
# queue declared before they were added is taken as it is.
PLACEMENT: FieldTable = {"x-quorum-initial-group-size": REPLICAS, "x-queue-leader-locator": "balanced"}


def partition(conversation_id: uuid.UUID, partitions: int) -> int:
    """Stable partition of a conversation: the same on every instance and every restart."""
    return zlib.crc32(conversation_id.bytes) % partitions


def new_message_id(conversation_id: uuid.UUID) -> uuid.UUID:
    """A message id that carries its conversation's partition: its first four bytes are the
    conversation's crc32, the rest random (a version 8 UUID). A command on a message (edit,
    delete, react) names only the message, and the gateway routes it by :func:`message_partition`
    into its conversation's queue, in order with that conversation's messages, without a lookup."""
    raw = bytearray(zlib.crc32(conversation_id.bytes).to_bytes(4, "big") + os.urandom(12))
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return uuid.UUID(bytes=bytes(raw))


def command_partition(command: Command, partitions: int) -> int:
    """The partition queue a command goes to: its conversation's (found from the message id when
    the command names only a message)."""
    if command.conversation_id is not None:
        return partition(command.conversation_id, partitions)
    assert isinstance(command, MessageCommand)  # the only commands without a conversation
    return message_partition(command.message_id, partitions)


def message_partition(message_id: uuid.UUID, partitions: int) -> int:
    """The partition of a message's conversation, for an id made by :func:`new_message_id` (an id
    of an earlier version gives any partition: the writer there sends the command on)."""
    return int.from_bytes(message_id.bytes[:4], "big") % partitions


def command_queue(p: int) -> str:
    return f"{COMMANDS}.{p}"


def event_queue(p: int) -> str:
    return f"{EVENTS}.{p}"


class PartitionsMismatch(Fatal):
    """This broker's queues were laid out for another CHAT_PARTITIONS."""


async def declare_quorum(channel: AbstractChannel, name: str, arguments: FieldTable) -> AbstractQueue:
    """A durable quorum queue with :data:`PLACEMENT`, or as an earlier version declared it.

    A refused declare closes the channel: it is reopened for the next declaration (callers set
    their prefetch after declaring)."""
    try:
        return await channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": "quorum", **arguments, **PLACEMENT}
        )
    except ChannelPreconditionFailed as exc:
        if not any(key in str(exc) for key in PLACEMENT):
            raise
        await channel.reopen()
        log.info("queue_declared_before_placement", queue=name)
    return await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum", **arguments})


async def check_partitions(channel: AbstractChannel, partitions: int) -> None:
    """Declare the marker with ``partitions``; a different recorded value stops the service.

    A marker of an earlier version (a classic queue, which is unreachable while its node is down)
    is checked the same way if it can be reached, then deleted."""
    try:
        await declare_quorum(channel, PARTITIONS_MARKER, {"x-max-length": partitions})
        await _retire_legacy_marker(channel, partitions)
    except ChannelPreconditionFailed as exc:
        raise PartitionsMismatch(
            f"CHAT_PARTITIONS={partitions} does not match this broker, whose queues were laid out for another "
            f"count ({exc}). Changing it on a running system would split conversations across queues and break "
            "their order: keep the old value, or follow docs/operations.md (drain, then delete the "
            f"{PARTITIONS_MARKER!r} queue) to change it"
        ) from None


async def _retire_legacy_marker(channel: AbstractChannel, partitions: int) -> None:
    try:
        await channel.declare_queue(LEGACY_PARTITIONS_MARKER, passive=True)
    except AMQPError:  # none (or unreachable: its node is down); the quorum marker is enough
        await channel.reopen()  # a refused declare closed it
        return
    await channel.declare_queue(LEGACY_PARTITIONS_MARKER, durable=True, arguments={"x-max-length": partitions})
    await channel.queue_delete(LEGACY_PARTITIONS_MARKER)
    log.info("legacy_partition_marker_retired", queue=LEGACY_PARTITIONS_MARKER)


def gateway_queue(instance_id: str) -> str:
    return f"chat.gateway.{instance_id}"


async def _dead_letter(channel: AbstractChannel) -> None:
    dead = await channel.declare_exchange(DEAD, aio_pika.ExchangeType.FANOUT, durable=True)
    queue = await declare_quorum(channel, DEAD, {})
    await queue.bind(dead)


async def _partitioned(channel: AbstractChannel, exchange_name: str, partitions: int) -> list[AbstractQueue]:
    await check_partitions(channel, partitions)
    await _dead_letter(channel)
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.DIRECT, durable=True)
    queues = []
    for p in range(partitions):
        queue = await declare_quorum(
            channel,
            f"{exchange_name}.{p}",
            {
                "x-single-active-consumer": True,
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": DEAD,
            },
        )
        await queue.bind(exchange, routing_key=str(p))
        queues.append(queue)
    return queues


async def declare_commands(channel: AbstractChannel, partitions: int) -> list[AbstractQueue]:
    return await _partitioned(channel, COMMANDS, partitions)


async def declare_events(channel: AbstractChannel, partitions: int) -> list[AbstractQueue]:
    return await _partitioned(channel, EVENTS, partitions)


async def declare_deliveries(channel: AbstractChannel) -> tuple[AbstractExchange, AbstractExchange]:
    direct = await channel.declare_exchange(DELIVERIES, aio_pika.ExchangeType.DIRECT, durable=True)
    fanout = await channel.declare_exchange(BROADCAST, aio_pika.ExchangeType.FANOUT, durable=True)
    return direct, fanout


async def declare_gateway_queue(channel: AbstractChannel, instance_id: str) -> AbstractQueue:
    """This gateway's own queue: exclusive to this connection, so it lives on the connection's node
    and goes with the connection (deliveries are transient; a gateway that loses its connection
    closes its sockets with 1012 anyway). A durable queue would live on one node, and while that
    node is down nobody could declare, consume or publish to it."""
    direct, fanout = await declare_deliveries(channel)
    queue = await channel.declare_queue(gateway_queue(instance_id), durable=False, exclusive=True, auto_delete=True)
    await queue.bind(direct, routing_key=instance_id)
    await queue.bind(fanout)
    return queue


def typing_queue(exchange: str) -> str:
    """The queue behind ``chat.typing`` or ``chat.typing.events`` (``.v2``: a quorum queue; the
    classic queue of the exchange's own name, of earlier versions, is deleted once unused)."""
    return f"{exchange}.v2"


async def declare_typing(channel: AbstractChannel, name: str) -> AbstractQueue:
    """``chat.typing`` or ``chat.typing.events``: an exchange and the one queue bound to it
    (publish to the exchange, routing key ``""``, transient; not through the default exchange,
    which the deployed user may not write to: deploy/k8s grants ``^chat\\.`` only). A quorum
    queue, so that it outlives any one broker node (a classic queue is unreachable while its node
    is down, and every service declares this one when it connects); expiry and the bound keep it
    small whoever stops consuming, and with no delivery limit the expiry is also what ends a
    message that keeps crashing its consumer."""
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
    queue = await declare_quorum(
        channel,
        typing_queue(name),
        {"x-message-ttl": TYPING_TTL_MS, "x-max-length": TYPING_MAX, "x-overflow": "drop-head"},
    )
    await queue.bind(exchange, routing_key="")
    await _retire_legacy_typing_queue(channel, name)
    return queue


async def _retire_legacy_typing_queue(channel: AbstractChannel, name: str) -> None:
    """Delete the classic typing queue of earlier versions once nothing consumes it (a writer or
    notifier of an earlier version still may, during an upgrade). Its node may be down: then it
    stays, unused, until it can be reached."""
    try:
        await channel.queue_delete(name, if_unused=True)
    except AMQPError:
        await channel.reopen()  # a refused delete closed it
