"""One RabbitMQ connection per process, rebuilt from scratch whenever it drops.

We do not use aio-pika's robust connection: it can come back without its consumers or
channels (aio-pika #231, #563), its publish can hang while reconnecting (#636), and its first
connect does not retry (#202). Instead :class:`Broker` runs an explicit loop: connect, declare,
start consumers, wait for the connection to close, tear everything down, back off, repeat.
While it is down, ``ready`` is false and ``publish`` fails at once with :class:`Unavailable`.

Consumers follow one rule (Zulip's queue workers, arq): code *states an outcome*. A body that
cannot be decoded raises :class:`Poison` (rejected without requeue, into the dead-letter
queue). The handler then returns (ack), or raises :class:`Retryable` (kept, retried in place
with backoff, so order is kept). Any other exception is a bug: the batch is requeued after a
pause and, being in a quorum queue with a delivery limit, dead-lettered if it keeps failing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError

from . import log as logging
from .tasks import cancel_and_wait

log = logging.get(__name__)
PUBLISH_TIMEOUT = 5.0


class Unavailable(Exception):
    """The broker could not take the message (down, timed out, or nacked it)."""


class Unroutable(Unavailable):
    """The broker returned the message: no queue is bound for its routing key."""


class Retryable(Exception):
    """A dependency failed; processing the same message later may succeed."""


class Poison(Exception):
    """The message can never be processed; dead-letter it."""


T = TypeVar("T")
Decode = Callable[[bytes], T]
Handle = Callable[[list[T]], Awaitable[None]]
Setup = Callable[[AbstractConnection], Awaitable[None]]


class Consumer(Generic[T]):
    """Consumes queues on one channel in batches: whatever has arrived is handled together.

    One AMQP message already carries a batch; under load several are waiting, and handling
    them in one go (one transaction, one Redis round trip, one publish per destination) is
    what keeps the per-message cost low. Messages are taken in delivery order, so each queue's
    order is kept, and the batch is settled with a single ``ack(multiple=True)``.
    """

    def __init__(self, queues: list[AbstractQueue], decode: Decode[T], handle: Handle[T], *, name: str,
                 max_batch: int = 256) -> None:
        self.queues = queues
        self.decode = decode
        self.handle = handle
        self.name = name
        self.max_batch = max_batch
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._tags: list[tuple[AbstractQueue, str]] = []
        self._task: asyncio.Task[None] | None = None
        self._current: asyncio.Future[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.name}")
        for queue in self.queues:
            self._tags.append((queue, await queue.consume(self._receive, no_ack=False)))

    async def _receive(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)

    async def _run(self) -> None:
        while True:
            batch = [await self._inbox.get()]  # cancelling here is safe: nothing in hand
            while len(batch) < self.max_batch and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            self._current = asyncio.ensure_future(self._process(batch))
            try:
                await asyncio.shield(self._current)
            finally:
                if self._current.done():
                    self._current = None

    async def _process(self, messages: list[AbstractIncomingMessage]) -> None:
        kept: list[AbstractIncomingMessage] = []
        items: list[T] = []
        for message in messages:
            try:
                items.append(self.decode(message.body))
                kept.append(message)
            except (Poison, ValueError) as exc:  # undecodable: no retry can help
                log.error("message_dead_lettered", consumer=self.name, reason=str(exc)[:500])
                await _settle(message.reject(requeue=False))
        if not kept:
            return
        last = kept[-1]
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await self.handle(items)
            except Retryable as exc:
                if self._stopping or last.channel.is_closed:
                    await _settle(last.nack(multiple=True, requeue=True))
                    return
                log.warning("batch_retry", consumer=self.name, error=str(exc)[:300], retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception:
                log.exception("batch_failed", consumer=self.name)
                await asyncio.sleep(1.0)
                await _settle(last.nack(multiple=True, requeue=True))  # counts toward the delivery limit
                return
            await _settle(last.ack(multiple=True))
            log.debug("batch_processed", consumer=self.name, messages=len(kept),
                      ms=round((time.perf_counter() - started) * 1000, 2))
            return

    async def stop(self) -> None:
        """Stop consuming, finish the batch in hand; unstarted ones are requeued by the broker."""
        self._stopping = True
        for queue, tag in self._tags:
            if not queue.channel.is_closed:
                try:
                    await asyncio.wait_for(queue.cancel(tag), 5)
                except (asyncio.TimeoutError, *CONNECTION_EXCEPTIONS):
                    pass
        await cancel_and_wait(self._task)
        if self._current is not None:
            await self._current


async def _settle(action: Awaitable[None]) -> None:
    """Ack/nack/reject on the message's own channel; if that channel died the broker redelivers."""
    try:
        await action
    except CONNECTION_EXCEPTIONS as exc:
        log.warning("settle_failed", error=exc.__class__.__name__)


class Broker:
    """Supervises one AMQP connection: a confirmed publish channel plus the caller's consumers."""

    def __init__(self, url: str, *, name: str, setup: Setup | None = None) -> None:
        self.url = url
        self.name = name
        self.setup = setup
        self.connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._workers: list[Consumer] = []  # type: ignore[type-arg]
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

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def consume(self, queues: list[AbstractQueue], decode: Decode[T], handle: Handle[T], *,
                      max_batch: int = 256) -> Consumer[T]:
        """Called from ``setup``: consume ``queues`` in batches; stopped and dropped with the connection."""
        consumer = Consumer(queues, decode, handle, name=",".join(q.name for q in queues), max_batch=max_batch)
        self._workers.append(consumer)
        await consumer.start()
        return consumer

    async def _run(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            self._lost = asyncio.Event()
            try:
                connection = await asyncio.wait_for(
                    aio_pika.connect(self.url, client_properties={"connection_name": self.name}), 10
                )
            except (asyncio.TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                log.warning("amqp_connect_failed", error=exc.__class__.__name__, retry_in=backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.connection = connection
            connection.close_callbacks.add(lambda *_: self._lost.set())
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                channel.close_callbacks.add(lambda *_: self._lost.set())
                self._channel = channel
                if self.setup is not None:
                    await self.setup(connection)
                self.connected.set()
                backoff = 0.25
                log.info("amqp_connected")
                stop_wait = asyncio.ensure_future(self._stop.wait())
                lost_wait = asyncio.ensure_future(self._lost.wait())
                await asyncio.wait([stop_wait, lost_wait], return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                lost_wait.cancel()
                if not self._stop.is_set():
                    log.warning("amqp_connection_lost")
            except (asyncio.TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                log.warning("amqp_setup_failed", error=f"{exc.__class__.__name__}: {exc}"[:300])
            finally:
                self.connected.clear()
                await self._teardown(connection)
            if not self._stop.is_set():
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _teardown(self, connection: AbstractConnection) -> None:
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        self._channel = None
        self._exchanges.clear()
        self.connection = None
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

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, mandatory: bool = False,
                      timeout: float = PUBLISH_TIMEOUT) -> None:
        """Publish persistently and wait for the broker's confirm, within ``timeout``."""
        channel = self._channel
        if channel is None or channel.is_closed or not self.connected.is_set():
            raise Unavailable("broker not connected")
        target = self._exchanges.get(exchange)
        if target is None:
            target = await channel.get_exchange(exchange, ensure=False)
            self._exchanges[exchange] = target
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=uuid.uuid4().hex,  # a returned message is matched to its publish by id
        )
        try:
            await asyncio.wait_for(target.publish(message, routing_key, mandatory=mandatory), timeout)
        except PublishError:
            raise Unroutable(f"no queue for {exchange}/{routing_key}") from None
        except DeliveryError as exc:
            raise Unavailable(f"broker refused the message: {exc}") from None
        except asyncio.TimeoutError:
            self._lost.set()  # a stuck connection is rebuilt rather than trusted
            raise Unavailable(f"no confirm within {timeout}s") from None
        except CONNECTION_EXCEPTIONS as exc:
            raise Unavailable(f"publish failed: {exc.__class__.__name__}") from None
