"""Micro-batching of commands toward the writer.

Every command from every socket joins the pending list; a single flusher task wakes, yields
once so frames already read from other sockets can join, groups what it has by partition and
publishes one confirmed AMQP message per partition. While that publish waits for its confirm,
new commands pile up for the next flush: batches grow with load on their own, and an idle
gateway adds no delay. One flush at a time keeps each connection's commands in the order
they arrived. When the broker cannot take a batch, each of its commands' ``on_fail`` runs, so
the client hears ``unavailable`` instead of silence.

Typing is not a command anybody must keep: a flush's typing goes as one transient message to
``chat.typing`` (docs/events.md), never through the partitions' quorum queues, and is dropped
quietly when the broker cannot take it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

import prometheus_client

from shared import envelope, topology
from shared.amqp import Broker, Unavailable
from shared.envelope import Command, Commands, StartTyping
from shared.log import get_logger
from shared.tasks import cancel_and_wait

log = get_logger(__name__)
FailureCallback = Callable[[str], None]

FLUSH_SIZE = prometheus_client.Histogram(
    "chat_gateway_flush_commands", "Commands per flush", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
)
MAX_PENDING = 10_000  # commands waiting for a flush, all sockets together
PENDING_FULL = prometheus_client.Counter(
    "chat_gateway_commands_refused_full_total", "Commands refused because too many were waiting for the broker"
)
PUBLISH_FAILED = prometheus_client.Counter(
    "chat_gateway_commands_unavailable_total", "Commands the broker could not take"
)
TYPING_DROPPED = prometheus_client.Counter(
    "chat_gateway_typing_dropped_total", "Typing frames dropped because the broker could not take them"
)


class CommandPublisher:
    def __init__(
        self, broker: Broker, partitions: int, *, max_batch: int = 1000, max_pending: int = MAX_PENDING
    ) -> None:
        self.broker = broker
        self.partitions = partitions
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._pending: list[tuple[Command, FailureCallback | None]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="command-publisher")

    def submit(self, command: Command, on_fail: FailureCallback | None = None) -> bool:
        """Queue ``command`` for the next flush; False (refused) when ``max_pending`` wait already,
        e.g. while the broker blocks publishers: memory stays bounded and the client hears it."""
        if len(self._pending) >= self.max_pending:
            PENDING_FULL.inc()
            return False
        self._pending.append((command, on_fail))
        self._idle.clear()
        self._wake.set()
        return True

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._pending) < self.max_batch:
                await asyncio.sleep(0)  # let frames already read from other sockets join this flush
            self._wake.clear()
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            if self._pending:
                self._wake.set()
            await self._flush(batch)
            if not self._pending:
                self._idle.set()

    async def _flush(self, batch: list[tuple[Command, FailureCallback | None]]) -> None:
        grouped: dict[int, list[tuple[Command, FailureCallback | None]]] = defaultdict(list)
        typing: list[Command] = []
        for item in batch:
            if isinstance(item[0], StartTyping):
                typing.append(item[0])
            else:
                grouped[topology.partition(item[0].conversation_id, self.partitions)].append(item)
        FLUSH_SIZE.observe(len(batch))

        async def ephemeral() -> None:
            try:
                await self.broker.publish(
                    topology.TYPING, "", envelope.encode(Commands(items=typing)), persistent=False
                )
            except Unavailable:
                TYPING_DROPPED.inc(len(typing))

        async def one(p: int, items: list[tuple[Command, FailureCallback | None]]) -> None:
            body = envelope.encode(Commands(items=[c for c, _ in items]))
            try:
                await self.broker.publish(topology.COMMANDS, str(p), body)
            except Unavailable as exc:
                PUBLISH_FAILED.inc(len(items))
                log.warning("commands_unavailable", partition=p, commands=len(items), error=str(exc))
                for _, on_fail in items:
                    if on_fail is not None:
                        on_fail(str(exc))

        await asyncio.gather(*(one(p, items) for p, items in grouped.items()), *([ephemeral()] if typing else []))

    async def close(self) -> None:
        """Publish what is pending (bounded), then stop the flusher."""
        try:
            await asyncio.wait_for(self._idle.wait(), 10)
        except asyncio.TimeoutError:
            log.warning("commands_dropped_at_shutdown", commands=len(self._pending))
        await cancel_and_wait(self._task)
