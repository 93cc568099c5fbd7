"""Micro-batching of commands toward the writer.

Every command from every socket joins the pending list; a single flusher task wakes, yields
once so frames already read from other sockets can join, groups what it has by partition and
publishes one confirmed AMQP message per partition. While that publish waits for its confirm,
new commands pile up for the next flush: batches grow with load on their own, and an idle
gateway adds no delay. Under load a flush also waits until a *linger* has passed since the
previous one began (:func:`linger`: none at 200 commands/s or less, rising to
``CHAT_FLUSH_LINGER_MS`` at 1,000/s), so each AMQP message carries more commands and every stage
after it (confirms, the writer's transactions, the notifier's lookups, deliveries) does its
per-batch work less often: at 1,000 msg/s on two cores this halved the CPU per message and kept
p99 under 50 ms (docs/benchmarks.md, "The gateway's linger under load"). One flush at a time keeps each
connection's commands in the order they arrived. When the broker cannot take a batch, each of its
commands' ``on_fail`` runs, so the client hears ``unavailable`` instead of silence.

Typing is not a command anybody must keep: a flush's typing goes as one transient message to
``chat.typing`` (docs/events.md), never through the partitions' quorum queues, and is dropped
quietly when the broker cannot take it.
"""

from __future__ import annotations

import asyncio
import math
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
LINGER_FROM = 200.0  # commands a second at or below which every flush goes at once
LINGER_FULL = 1000.0  # commands a second from which flushes begin the whole linger apart
RATE_WINDOW = 0.5  # seconds over which the gateway's command rate is measured
PENDING_FULL = prometheus_client.Counter(
    "chat_gateway_commands_refused_full_total", "Commands refused because too many were waiting for the broker"
)
PUBLISH_FAILED = prometheus_client.Counter(
    "chat_gateway_commands_unavailable_total", "Commands the broker could not take"
)
TYPING_DROPPED = prometheus_client.Counter(
    "chat_gateway_typing_dropped_total", "Typing frames dropped because the broker could not take them"
)


def linger(rate: float, most: float) -> float:
    """Seconds between the starts of two flushes for a gateway taking ``rate`` commands a second:
    0 up to ``LINGER_FROM`` (at low rates a message's latency is its hops, and batching would only
    add to it), rising evenly to ``most`` at ``LINGER_FULL`` and above."""
    share = (rate - LINGER_FROM) / (LINGER_FULL - LINGER_FROM)
    return most * min(1.0, max(0.0, share))


class Pace:
    """The rate of commands flushed, measured over windows of ``RATE_WINDOW`` seconds (a pause
    longer than that ends a window with a low rate, so the first flush after it goes at once), and
    how long the next flush should wait for the linger that rate calls for."""

    def __init__(self, most: float) -> None:
        self.most = most
        self.rate = 0.0
        self.last = -math.inf  # when the previous flush began
        self._since = -math.inf
        self._count = 0

    def hold(self, now: float) -> float:
        """Seconds to wait before flushing at ``now``."""
        return max(0.0, self.last + linger(self.rate, self.most) - now)

    def flushed(self, now: float, commands: int) -> None:
        """A flush of ``commands`` began at ``now``."""
        self.last = now
        if now - self._since >= RATE_WINDOW:  # the first flush ends an infinite window: rate 0
            self.rate = self._count / (now - self._since)
            self._since, self._count = now, 0
        self._count += commands


class CommandPublisher:
    def __init__(
        self,
        broker: Broker,
        partitions: int,
        *,
        linger: float = 0.0,
        max_batch: int = 1000,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.broker = broker
        self.partitions = partitions
        self.pace = Pace(linger)
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
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if len(self._pending) < self.max_batch:
                # under load, the linger; otherwise let frames already read from other sockets join this flush
                await asyncio.sleep(self.pace.hold(loop.time()))
            self._wake.clear()
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self.pace.flushed(loop.time(), len(batch))
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
                grouped[topology.command_partition(item[0], self.partitions)].append(item)
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
