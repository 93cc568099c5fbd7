"""One RabbitMQ connection per process, rebuilt from scratch whenever it drops.

We do not use aio-pika's robust connection: it can come back without its consumers or
channels (aio-pika #231, #563), its publish can hang while reconnecting (#636), and its first
connect does not retry (#202). Instead :class:`Broker` runs an explicit loop: connect, declare,
start consumers, wait for the connection to close, tear everything down, back off, repeat.
While it is down, ``ready`` is false and ``publish`` fails at once with :class:`Unavailable`.

Consumers follow one rule (Zulip's queue workers, arq): a handler *states an outcome*, and one
wrapper (:class:`Consumer`) turns it into ack, retry or dead-letter:

- it returns: the batch is done and acked;
- it raises :class:`Retryable` (a dependency is down): the same items are tried again in place,
  with backoff, for as long as it takes; ``chat_consumer_retrying`` and a ``batch_retry`` log
  line show it meanwhile, and the queue's order is kept;
- it raises :class:`Poison`, or anything else (a bug, a value the database refuses): the
  culprit is isolated by splitting the batch in halves until the failing item stands alone.
  Every other item is handled as usual; the culprit goes to ``chat.dead`` at once, with the
  reason in the ``x-chat-reason`` header, and the handler's ``rejected`` hook answers its
  sender. Nothing is ever requeued toward the delivery limit.

A body that cannot be decoded is dead-lettered the same way, with its reason.

Each queue has its own channel, and a failed batch is retried or isolated queue by queue, so
one queue's trouble holds another's messages at most until the batch they share fails;
releasing a queue is closing its channel: the broker returns the unacked messages to the head
of the queue, in order, and activates the next single-active consumer in the same step
(docs/events.md, "Handing a partition from one consumer to the next", with RabbitMQ's sources).
``basic.cancel`` is never used: it would let the successor start past our prefetched messages,
out of order.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

import aio_pika
import aiormq
import prometheus_client
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError
from aiormq.abc import DeliveredMessage
from yarl import URL

from .amqp_socket import CoalescingTransportFactory
from .log import get_logger
from .tasks import cancel_and_wait

log = get_logger(__name__)
PUBLISH_TIMEOUT = 5.0
# AMQP heartbeat: the broker closes the connection of a process that stops answering (a frozen
# pod, SIGSTOP) after about two of these, which hands its single-active-consumer queues to the
# next replica; RabbitMQ's default of 60 s held a frozen writer's partitions for 45 s or more.
HEARTBEAT_SECONDS = 5
PREFETCH = 64  # unacked messages per consumer (per partition queue); also the largest batch
DEAD = "chat.dead"  # the dead-letter exchange (declared by topology)
REASON_HEADER = "x-chat-reason"
QUEUE_HEADER = "x-chat-queue"

RETRYING = prometheus_client.Gauge("chat_consumer_retrying", "1 while a consumer retries a batch", ["queue"])
RETRIES = prometheus_client.Counter("chat_consumer_retries_total", "Retryable failures of a batch", ["kind"])
DEAD_LETTERED = prometheus_client.Counter(
    "chat_consumer_dead_lettered_total", "Items or bodies set aside into chat.dead", ["kind"]
)
PUBLISH_SECONDS = prometheus_client.Histogram(
    "chat_amqp_publish_seconds",
    "A publish until the broker's confirm",
    ["exchange"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
ISOLATIONS = prometheus_client.Counter(
    "chat_consumer_isolations_total", "Batches split to isolate an item that failed", ["kind"]
)


class Unavailable(Exception):
    """The broker could not take the message (down, timed out, or nacked it)."""


class Unroutable(Unavailable):
    """The broker returned the message: no queue is bound for its routing key."""


class Retryable(Exception):
    """A dependency failed; processing the same message later may succeed."""


class Poison(Exception):
    """The message can never be processed; dead-letter it."""


class Fatal(Exception):
    """The broker's state contradicts this process's settings: stop the service with this message."""


T = TypeVar("T")
Setup = Callable[[AbstractConnection], Awaitable[None]]


class Handler(Protocol[T]):
    """What a service gives a consumer: how to read a body, handle items, and answer a culprit."""

    kind: str  # e.g. "writer": a label for metrics and logs

    def decode(self, body: bytes) -> list[T]:
        """Items of one body; raise Poison or ValueError if it is not one."""

    def encode(self, items: list[T]) -> bytes:
        """A body holding ``items`` (used to dead-letter a culprit alone)."""

    async def handle(self, items: list[T]) -> None:
        """Handle items in order; raise Retryable, Poison, or fail as it may."""

    async def rejected(self, item: T, reason: str) -> None:
        """``item`` was set aside: tell whoever waits for it (raise Retryable if that fails)."""


class Backoff:
    """Sleeps between retries, doubling from ``first`` to ``cap``; ``stop()`` ends the wait early."""

    def __init__(self, first: float = 0.2, cap: float = 5.0, stopping: asyncio.Event | None = None) -> None:
        self.first = first
        self.cap = cap
        self.delay = first
        self.stopping = stopping if stopping is not None else asyncio.Event()

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self) -> bool:
        """Wait before the next try; False if the consumer is stopping (leave the items unsettled)."""
        if self.stopping.is_set():
            return False
        try:
            await asyncio.wait_for(self.stopping.wait(), self.delay)
            return False
        except asyncio.TimeoutError:
            self.delay = min(self.delay * 2, self.cap)
            return True


def reason_of(exc: BaseException) -> str:
    text = str(exc)
    return (f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__)[:500]


async def isolate(
    items: list[T],
    handle: Callable[[list[T]], Awaitable[None]],
    poisoned: Callable[[T, str], Awaitable[None]],
    backoff: Backoff,
    on_retry: Callable[[BaseException], None] = lambda exc: None,
    on_split: Callable[[int], None] = lambda n: None,
) -> bool:
    """Handle ``items`` so that an item that cannot be handled fails alone, in order.

    The whole list is tried first (the common case costs one call). A non-retryable failure
    splits the failing piece in halves, each tried in turn, until the culprit stands alone and
    goes to ``poisoned``. A :class:`Retryable` failure retries the same piece after
    ``backoff``; the pieces before it are not handled again. Returns False if the consumer
    stopped before the end (the rest stays unsettled, for the broker to redeliver).
    """
    pending: deque[tuple[list[T], str | None]] = deque([(items, None)] if items else [])
    while pending:
        piece, culprit = pending[0]  # culprit: why this one-item piece failed, once isolated
        try:
            if culprit is None:
                await handle(piece)
            else:
                await poisoned(piece[0], culprit)
        except Retryable as exc:
            on_retry(exc)
            if not await backoff.wait():
                return False
            continue
        except Exception as exc:
            pending.popleft()
            if culprit is not None:
                log.exception("dead_letter_hook_failed", reason=culprit)  # a bug in poisoned(): move on
            elif len(piece) == 1:
                pending.appendleft((piece, reason_of(exc)))
            else:
                on_split(len(piece))
                mid = len(piece) // 2
                pending.extendleft([(piece[mid:], None), (piece[:mid], None)])
            continue
        pending.popleft()
        backoff.reset()
    return True


DeadLetter = Callable[[bytes, str, str], Awaitable[None]]


STALL_AFTER = 0.1  # a batch running this long lets another batch start for the other queues
RELEASE_TIMEOUT = 15.0  # the longest a release waits for the batch holding its queue


@dataclass(eq=False)
class Source:
    """One queue, consumed on its own channel: its waiting messages and whether a batch holds it."""

    key: int | str
    channel: AbstractChannel
    queue: AbstractQueue
    inbox: deque[DeliveredMessage] = field(default_factory=deque)
    busy: bool = False
    closing: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class Consumer(Generic[T]):
    """Consumes any number of queues, each on its own channel, in batches that combine them.

    A batch takes every message waiting in every queue no other batch holds (one transaction,
    one Redis round trip, one publish per destination for all of them: that is what keeps the
    cost per message low). Normally one batch runs at a time. When it has run for
    ``STALL_AFTER`` (a lock, a slow dependency), another may start for the queues it does not
    hold, up to ``max_concurrent``: a stalled queue does not stall the others' new messages. A batch that
    fails is handled again queue by queue, each with :func:`isolate`, so a retry or a culprit in
    one queue never holds back the others' messages. Each queue's messages are settled on its
    own channel with one ``ack(multiple=True)``.
    """

    def __init__(
        self,
        handler: Handler[T],
        dead_letter: DeadLetter,
        *,
        name: str,
        max_batch: int = PREFETCH,
        max_concurrent: int = 4,
    ) -> None:
        self.handler = handler
        self.dead_letter = dead_letter
        self.name = name
        self.max_batch = max_batch
        self.max_concurrent = max_concurrent
        self.sources: dict[int | str, Source] = {}
        self._wake = asyncio.Event()
        self._running: dict[asyncio.Task[None], float] = {}
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next = 0  # round-robin start, so no queue is always last to be taken

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.name}")

    async def add(
        self, key: int | str, channel: AbstractChannel, queue: AbstractQueue, consumer_tag: str | None = None
    ) -> None:
        """Subscribe to ``queue`` on ``channel`` (this consumer's to close)."""
        source = Source(key, channel, queue)
        source.idle.set()
        self.sources[key] = source

        async def receive(message: DeliveredMessage) -> None:
            source.inbox.append(message)
            self._wake.set()

        # straight onto aiormq's channel: aio-pika's queue.consume() wraps every delivery in an
        # IncomingMessage and one more task, which we never use (~7 % of the writer's profile at 1,000 msg/s)
        underlay = await channel.get_underlay_channel()
        await underlay.basic_consume(queue.name, receive, no_ack=False, consumer_tag=consumer_tag)

    async def remove(self, key: int | str) -> None:
        """Release a queue: no new batch takes it, the batch holding it finishes, its channel closes
        (the broker returns the rest to the queue's head and activates the next consumer)."""
        source = self.sources.get(key)
        if source is None:
            return
        source.closing = True
        try:
            await asyncio.wait_for(source.idle.wait(), RELEASE_TIMEOUT)
        except asyncio.TimeoutError:  # closing anyway is safe: the broker redelivers what is unacked
            log.warning("release_timeout", queue=source.queue.name, seconds=RELEASE_TIMEOUT)
        self.sources.pop(key, None)
        await _close(source.channel)

    async def stop(self) -> None:
        """Take nothing more, end retries, finish the batches in hand, release every queue."""
        self._stopping.set()
        await cancel_and_wait(self._task)
        self._task = None
        for source in self.sources.values():
            source.closing = True
        log.info("consumer_stopping", consumer=self.name, batches=len(self._running), queues=len(self.sources))
        if self._running:
            await asyncio.wait(list(self._running), timeout=RELEASE_TIMEOUT)
        await asyncio.gather(*(self.remove(key) for key in list(self.sources)), return_exceptions=True)
        log.info("consumer_stopped", consumer=self.name)

    def _startable(self, now: float) -> float | None:
        """0 if a batch may start now, else how long until one may (None: only when one ends)."""
        if len(self._running) >= self.max_concurrent:
            return None
        if not self._running:
            return 0.0
        wait = max(self._running.values()) + STALL_AFTER - now
        return max(wait, 0.0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self._startable(loop.time())
            if wait == 0.0:
                batch = self._take()
                if batch:
                    task = asyncio.create_task(self._process(batch))
                    self._running[task] = loop.time()
                    task.add_done_callback(self._finished)
                    continue
                wait = None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            log.error("batch_crashed", consumer=self.name, error=reason_of(failure))
        self._wake.set()

    def _take(self) -> list[tuple[Source, list[DeliveredMessage]]]:
        sources = list(self.sources.values())
        if not sources:
            return []
        self._next = (self._next + 1) % len(sources)
        batch: list[tuple[Source, list[DeliveredMessage]]] = []
        room = self.max_batch
        for source in sources[self._next :] + sources[: self._next]:
            if source.busy or source.closing or not source.inbox or room <= 0:
                continue
            taken = [source.inbox.popleft() for _ in range(min(room, len(source.inbox)))]
            room -= len(taken)
            source.busy = True
            source.idle.clear()
            batch.append((source, taken))
        return batch

    def _release(self, source: Source) -> None:
        source.busy = False
        source.idle.set()
        self._wake.set()

    async def _process(self, batch: list[tuple[Source, list[DeliveredMessage]]]) -> None:
        started = time.perf_counter()
        parts = [(source, messages, await self._decode(source, messages)) for source, messages in batch]
        items = [item for _, _, part in parts for item in part]
        try:
            if items:
                await self.handler.handle(items)
        except Exception as exc:  # retry or isolate queue by queue, each on its own
            if len(parts) > 1 or not isinstance(exc, Retryable):
                log.warning("batch_split", consumer=self.name, queues=len(parts), error=reason_of(exc)[:300])
            await asyncio.gather(*(self._one(source, messages, part, exc) for source, messages, part in parts))
            return
        for source, messages, _ in parts:
            await _settle(_ack_through(messages[-1]))
            self._release(source)
        log.debug(
            "batch_processed",
            consumer=self.name,
            queues=len(parts),
            items=len(items),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _decode(self, source: Source, messages: list[DeliveredMessage]) -> list[T]:
        items: list[T] = []
        for message in messages:
            try:
                items.extend(self.handler.decode(message.body))
            except Exception as exc:  # undecodable (Poison, ValueError or worse): no retry can help
                DEAD_LETTERED.labels(self.handler.kind).inc()
                log.error("message_dead_lettered", queue=source.queue.name, reason=reason_of(exc))
                await self._dead_letter_retrying(message.body, reason_of(exc), source.queue.name)
        return items

    async def _one(
        self, source: Source, messages: list[DeliveredMessage], items: list[T], first: BaseException
    ) -> None:
        """One queue's share of a failed batch: retried or isolated alone, then settled."""
        kind, queue = self.handler.kind, source.queue.name
        backoff = Backoff(stopping=self._stopping)

        def retried(exc: BaseException) -> None:
            RETRIES.labels(kind).inc()
            RETRYING.labels(queue).set(1)
            log.warning("batch_retry", queue=queue, error=reason_of(exc)[:300], retry_in=backoff.delay)

        def split(n: int) -> None:
            ISOLATIONS.labels(kind).inc()
            log.warning("batch_isolating", queue=queue, items=n)

        async def poisoned(item: T, reason: str) -> None:
            DEAD_LETTERED.labels(kind).inc()
            log.error("item_dead_lettered", queue=queue, reason=reason)
            await _retryable(self.dead_letter(self.handler.encode([item]), reason, queue))
            await self.handler.rejected(item, reason)

        try:
            if isinstance(first, Retryable):
                retried(first)
                if not await backoff.wait():
                    return
            done = await isolate(items, self.handler.handle, poisoned, backoff, retried, split)
            RETRYING.labels(queue).set(0)
            if done:
                await _settle(_ack_through(messages[-1]))
        finally:
            self._release(source)  # when not done, closing the channel hands the messages back

    async def _dead_letter_retrying(self, body: bytes, reason: str, queue: str) -> None:
        backoff = Backoff(stopping=self._stopping)
        while True:
            try:
                await _retryable(self.dead_letter(body, reason, queue))
                return
            except Retryable as exc:
                log.warning("dead_letter_retry", queue=queue, error=reason_of(exc))
                if not await backoff.wait():
                    return


async def _retryable(action: Awaitable[None]) -> None:
    try:
        await action
    except Unavailable as exc:
        raise Retryable(f"broker: {exc}") from None


async def _close(channel: AbstractChannel) -> None:
    if not channel.is_closed:
        try:
            await asyncio.wait_for(channel.close(), 5)
        except (asyncio.TimeoutError, *CONNECTION_EXCEPTIONS):
            pass


def _ack_through(message: DeliveredMessage) -> Awaitable[None]:
    """Ack ``message`` and every earlier one of its channel (``multiple``).

    Queued for the connection's writer without waiting for the socket write (``wait=False``), so
    a batch's acks on its several channels leave in one write (shared/amqp_socket.py). An ack lost
    with the connection is no loss: the broker redelivers, and every consumer is idempotent."""
    tag = message.delivery_tag
    if tag is None:  # only a basic.get-empty or a return has none; never a consumed message
        raise ValueError("a delivery without a delivery tag")
    return message.channel.basic_ack(tag, multiple=True, wait=False)


async def _settle(action: Awaitable[None]) -> None:
    """Ack/nack/reject on the message's own channel; if that channel died the broker redelivers."""
    try:
        await action
    except Exception as exc:  # closed channel, stale tag: the broker redelivers, never our problem to raise
        log.warning("settle_failed", error=exc.__class__.__name__)


class Worker(Protocol):
    async def stop(self) -> None: ...


class PartitionGroup(Generic[T]):
    """The partition queues this replica is assigned (``want``), one channel each, one Consumer.

    ``want`` only records the wish; a reconcile task owned by the group releases the queues no
    longer wanted (first, so their successors can start) and subscribes to the new ones. It
    follows the broker's connection: ``attach`` on every (re)connect, ``stop`` on teardown.
    """

    def __init__(
        self,
        broker: Broker,
        queue_name: Callable[[int], str],
        handler: Handler[T],
        *,
        prefetch: int = PREFETCH,
        max_concurrent: int = 4,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.on_change = on_change  # called when a queue was released and before one is subscribed to
        self.queue_name = queue_name
        self.handler = handler
        self.prefetch = prefetch
        self.max_concurrent = max_concurrent
        self.wanted: frozenset[int] = frozenset()
        self.consumer: Consumer[T] | None = None
        self._connection: AbstractConnection | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def want(self, partitions: frozenset[int]) -> None:
        self.wanted = partitions
        self._changed.set()

    async def attach(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self.consumer = Consumer(
            self.handler,
            self.broker.dead_letter,
            name=self.handler.kind,
            max_batch=self.prefetch,
            max_concurrent=self.max_concurrent,
        )
        self.consumer.start()
        await self._sync()
        self._task = asyncio.create_task(self._reconcile(), name=f"partitions:{self.handler.kind}")

    async def _reconcile(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self._sync()

    async def _sync(self) -> None:
        self._changed.clear()
        consumer, wanted = self.consumer, self.wanted
        if consumer is None:
            return
        held = {int(k) for k in consumer.sources}
        gone = sorted(held - wanted)
        await asyncio.gather(*(consumer.remove(p) for p in gone), return_exceptions=True)
        if self.on_change is not None and (gone or wanted - held):
            self.on_change()
        for p in sorted(wanted - held):
            if self._connection is None or self._connection.is_closed:
                return
            try:
                channel = await asyncio.wait_for(self._connection.channel(), 10)
                await channel.set_qos(prefetch_count=self.prefetch)
                queue = await channel.get_queue(self.queue_name(p), ensure=False)
                await consumer.add(p, channel, queue, consumer_tag=f"{self.broker.name}:{p}")
            except (asyncio.TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                log.warning("partition_subscribe_failed", partition=p, error=reason_of(exc))
                self.broker.lost()  # rebuild the connection rather than run with a hole
                return
        if gone or wanted - held:
            log.info("partitions_consuming", kind=self.handler.kind, partitions=sorted(consumer.sources))

    async def stop(self) -> None:
        """Release every queue (the connection is going away, or the service is shutting down)."""
        await cancel_and_wait(self._task)
        self._task = None
        if self.consumer is not None:
            await self.consumer.stop()
        self.consumer = None
        self._connection = None


class _Connection(aio_pika.Connection):
    """aio-pika's connection on a :class:`CoalescingTransportFactory` socket. ``aio_pika.connect``
    turns its keyword arguments into URL parameters, so the factory is handed to aiormq here, in
    the arguments aio-pika passes on to ``aiormq.connect``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kwargs["transport_factory"] = CoalescingTransportFactory()


def with_heartbeat(url: str, seconds: int = HEARTBEAT_SECONDS) -> str:
    """``url`` asking for ``seconds`` of AMQP heartbeat, unless it names one itself."""
    parsed = URL(url)
    return url if "heartbeat" in parsed.query else str(parsed.update_query(heartbeat=seconds))


def node_of(url: str) -> str:
    """``host:port`` of an AMQP URL, for logs (never its credentials)."""
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


class Broker:
    """Supervises one AMQP connection: a confirmed publish channel plus the caller's consumers.

    ``urls`` may name several nodes of a cluster: the connection goes to the first that answers,
    and when it is lost the next attempt starts with the following node, so a service moves off a
    node that died without waiting for it (aio-pika takes one URL; aio-pika #141).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        name: str,
        setup: Setup | None = None,
        on_fatal: Callable[[str], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.urls = tuple(with_heartbeat(u) for u in ((urls,) if isinstance(urls, str) else urls))
        if not self.urls:
            raise ValueError("Broker needs at least one URL")
        # index of the URL to try next: a random node first, so services spread over the cluster
        self._next = random.randrange(len(self.urls))
        self.name = name
        self.setup = setup
        self.on_fatal = on_fatal
        self.on_lost = on_lost  # a connection that was up went down (not at shutdown)
        self._channel: AbstractChannel | None = None
        self._underlay: aiormq.Channel | None = None  # the publish channel, as aiormq's
        self._workers: list[Worker] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.connected.is_set() and self._channel is not None and not self._channel.is_closed

    async def check(self) -> bool:
        """Readiness check: connected, with a usable publish channel."""
        return self.ready

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"broker:{self.name}")

    def lost(self) -> None:
        """Tear the connection down and rebuild it (a part of it can no longer be trusted)."""
        self._lost.set()

    async def consume(self, channel: AbstractChannel, queue: AbstractQueue, handler: Handler[T]) -> Consumer[T]:
        """Called from ``setup``: consume ``queue`` on ``channel`` (the consumer's own); dropped with the connection."""
        consumer = Consumer(handler, self.dead_letter, name=queue.name, max_concurrent=1)
        self._workers.append(consumer)
        consumer.start()
        await consumer.add(queue.name, channel, queue, consumer_tag=f"{self.name}:{queue.name}")
        return consumer

    async def consume_partitions(self, connection: AbstractConnection, group: PartitionGroup[T]) -> None:
        """Called from ``setup``: let ``group`` subscribe to the partitions it wants on this connection."""
        self._workers.append(group)
        await group.attach(connection)

    async def _run(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            self._lost = asyncio.Event()
            url = self.urls[self._next % len(self.urls)]
            self._next += 1
            try:
                connection = await asyncio.wait_for(
                    aio_pika.connect(
                        url, client_properties={"connection_name": self.name}, connection_class=_Connection
                    ),
                    10,
                )
            except (asyncio.TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                full_round = self._next % len(self.urls) == 0  # every node refused: wait before the next round
                log.warning(
                    "amqp_connect_failed",
                    node=node_of(url),
                    error=exc.__class__.__name__,
                    retry_in=backoff if full_round else 0,
                )
                if full_round:
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                continue
            connection.close_callbacks.add(lambda *_: self._lost.set())
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                channel.close_callbacks.add(lambda *_: self._lost.set())
                self._channel = channel
                self._underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                if self.setup is not None:
                    await self.setup(connection)
                self.connected.set()
                backoff = 0.25
                log.info("amqp_connected", node=node_of(url))
                stop_wait = asyncio.ensure_future(self._stop.wait())
                lost_wait = asyncio.ensure_future(self._lost.wait())
                await asyncio.wait([stop_wait, lost_wait], return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                lost_wait.cancel()
                if not self._stop.is_set():
                    log.warning("amqp_connection_lost")
                    if self.on_lost is not None:
                        self.on_lost()
            except Fatal as exc:
                log.error("amqp_setup_refused", error=str(exc))
                self._stop.set()
                if self.on_fatal is not None:
                    self.on_fatal(str(exc))
            except (asyncio.TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                log.warning("amqp_setup_failed", error=f"{exc.__class__.__name__}: {exc}"[:300])
            finally:
                self.connected.clear()
                await self._teardown(connection)
            if not self._stop.is_set():
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _teardown(self, connection: AbstractConnection) -> None:
        await self.stop_consuming()
        self._channel = None
        self._underlay = None
        try:
            await asyncio.wait_for(connection.close(), 5)
        except (asyncio.TimeoutError, *CONNECTION_EXCEPTIONS):
            pass

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def stop_consuming(self) -> None:
        """First step of shutdown: no new messages; the ones in hand are finished and acked."""
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def dead_letter(self, body: bytes, reason: str, queue: str) -> None:
        """Set ``body`` aside in ``chat.dead`` with why and where from (raises Unavailable)."""
        await self.publish(DEAD, "", body, headers={REASON_HEADER: reason, QUEUE_HEADER: queue})

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        mandatory: bool = False,
        timeout: float = PUBLISH_TIMEOUT,
        headers: dict[str, Any] | None = None,
        persistent: bool = True,
    ) -> None:
        """Publish (persistently unless told otherwise) and wait for the broker's confirm, within ``timeout``.

        Straight onto aiormq's channel: aio-pika's ``Message`` and ``Exchange`` objects were 3-4 %
        of a busy service's CPU (docs/benchmarks.md) for nothing this needs. ``wait=False``: the
        frame is queued to the connection's writer and only the confirm is awaited, so
        concurrent publishes do not wait for each other's socket writes.
        """
        channel = self._underlay
        if channel is None or channel.is_closed or not self.connected.is_set():
            raise Unavailable("broker not connected")
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=2 if persistent else 1,
            content_type="application/json",
            headers=headers,
        )  # aiormq gives each publish a message id, by which a returned message is matched to it
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):  # no task per publish, as wait_for would make
                await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                    wait=False,
                )
            PUBLISH_SECONDS.labels(exchange).observe(time.perf_counter() - started)
        except PublishError:
            raise Unroutable(f"no queue for {exchange}/{routing_key}") from None
        except DeliveryError as exc:
            raise Unavailable(f"broker refused the message: {exc}") from None
        except asyncio.TimeoutError:
            self._lost.set()  # a stuck connection is rebuilt rather than trusted
            raise Unavailable(f"no confirm within {timeout}s") from None
        except CONNECTION_EXCEPTIONS as exc:
            raise Unavailable(f"publish failed: {exc.__class__.__name__}") from None
