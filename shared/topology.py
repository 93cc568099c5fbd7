"""The RabbitMQ topology, declared in one place (docs/events.md draws it).

- ``chat.commands`` (direct) -> ``chat.commands.<p>``: gateway -> writer, one quorum queue per
  partition ``p = partition(conversation_id)``, single active consumer, so one writer at a time
  stores a conversation's messages, in the order they were published.
- ``chat.events`` (direct) -> ``chat.events.<p>``: writer/query -> notifier, partitioned the same
  way, so every connection receives a conversation's events in ``seq`` order.
- ``chat.deliveries`` (direct) -> ``chat.gateway.<instance>``: notifier -> the gateway holding
  the recipients' sockets; the queue expires once its gateway is gone.
- ``chat.broadcast`` (fanout) -> every gateway queue: used while the Redis registry is not
  trustworthy (just after Redis lost its data), so nothing is missed meanwhile.
- ``chat.typing`` and ``chat.typing.events`` (each an exchange and its one queue): typing, gateway ->
  writer (which checks membership) -> notifier. Classic queues of transient messages that expire
  after a few seconds and drop their oldest past a bound: typing needs no disk and no order, and
  a stale one is worth nothing. Every writer (notifier) consumes the one queue; any may take any.
- ``chat.dead`` (fanout) -> ``chat.dead``: poison messages and those redelivered too often.
- ``chat.partitions``: an empty marker queue whose ``x-max-length`` records ``CHAT_PARTITIONS``.
  RabbitMQ refuses to redeclare a queue with a different value, so a service started with
  another partition count is refused (:class:`PartitionsMismatch`) instead of silently sending
  a conversation's commands to a second queue, out of order.
"""

from __future__ import annotations

import uuid
import zlib

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed

from .amqp import DEAD, Fatal

COMMANDS = "chat.commands"
EVENTS = "chat.events"
DELIVERIES = "chat.deliveries"
BROADCAST = "chat.broadcast"
PARTITIONS_MARKER = "chat.partitions"
TYPING = "chat.typing"
TYPING_EVENTS = "chat.typing.events"
TYPING_TTL_MS = 5_000  # a typing indicator older than this is worth nothing
TYPING_MAX = 10_000  # messages a typing queue holds before it drops its oldest
DELIVERY_LIMIT = 20  # a message redelivered this often (e.g. it crashes its consumer) is dead-lettered
GATEWAY_QUEUE_EXPIRES_MS = 120_000


def partition(conversation_id: uuid.UUID, partitions: int) -> int:
    """Stable partition of a conversation: the same on every instance and every restart."""
    return zlib.crc32(conversation_id.bytes) % partitions


def command_queue(p: int) -> str:
    return f"{COMMANDS}.{p}"


def event_queue(p: int) -> str:
    return f"{EVENTS}.{p}"


class PartitionsMismatch(Fatal):
    """This broker's queues were laid out for another CHAT_PARTITIONS."""


async def check_partitions(channel: AbstractChannel, partitions: int) -> None:
    """Declare the marker with ``partitions``; a different recorded value stops the service.

    (RabbitMQ closes the channel of a refused declare; the service stops anyway.)
    """
    try:
        await channel.declare_queue(PARTITIONS_MARKER, durable=True, arguments={"x-max-length": partitions})
    except ChannelPreconditionFailed as exc:
        raise PartitionsMismatch(
            f"CHAT_PARTITIONS={partitions} does not match this broker, whose queues were laid out for another "
            f"count ({exc}). Changing it on a running system would split conversations across queues and break "
            "their order: keep the old value, or follow docs/operations.md (drain, then delete the "
            f"{PARTITIONS_MARKER!r} queue) to change it"
        ) from None


def gateway_queue(instance_id: str) -> str:
    return f"chat.gateway.{instance_id}"


async def _dead_letter(channel: AbstractChannel) -> None:
    dead = await channel.declare_exchange(DEAD, aio_pika.ExchangeType.FANOUT, durable=True)
    queue = await channel.declare_queue(DEAD, durable=True, arguments={"x-queue-type": "quorum"})
    await queue.bind(dead)


async def _partitioned(channel: AbstractChannel, exchange_name: str, partitions: int) -> list[AbstractQueue]:
    await check_partitions(channel, partitions)
    await _dead_letter(channel)
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.DIRECT, durable=True)
    queues = []
    for p in range(partitions):
        queue = await channel.declare_queue(
            f"{exchange_name}.{p}",
            durable=True,
            arguments={
                "x-queue-type": "quorum",
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
    """This gateway's own queue: durable (survives a broker restart), gone 2 min after its gateway."""
    direct, fanout = await declare_deliveries(channel)
    queue = await channel.declare_queue(
        gateway_queue(instance_id),
        durable=True,
        arguments={"x-expires": GATEWAY_QUEUE_EXPIRES_MS},
    )
    await queue.bind(direct, routing_key=instance_id)
    await queue.bind(fanout)
    return queue


async def declare_typing(channel: AbstractChannel, name: str) -> AbstractQueue:
    """``chat.typing`` or ``chat.typing.events``: an exchange and the one queue bound to it, both of
    that name (publish to the exchange, routing key ``""``, transient; not through the default
    exchange, which the deployed user may not write to: deploy/k8s grants ``^chat\\.`` only). The
    queue is durable so it is there after a broker restart for whoever publishes first; its
    messages are not (nothing of them is worth a disk write).
    Expiry and the bound keep it small whoever stops consuming; with no delivery limit, the expiry
    is also what ends a message that keeps crashing its consumer."""
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={"x-message-ttl": TYPING_TTL_MS, "x-max-length": TYPING_MAX, "x-overflow": "drop-head"},
    )
    await queue.bind(exchange, routing_key="")
    return queue
