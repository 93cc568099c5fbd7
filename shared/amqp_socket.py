"""The AMQP connection's socket: every frame queued in one turn of the event loop goes out in one write.

aiormq's writer task writes each frame on its own (a publish, an ack), and uvloop sends each
write at once: one syscall and one TCP segment per frame, each of which the broker wakes up
for and reads. A writer's batch that publishes to four partitions and then acks four queues
made eight. aiormq takes a :class:`aiormq.connection.TransportFactory` for its socket (its hook
for other transports); ours returns a writer that gathers what is written during one loop turn
and hands it to the transport once, at the end of that turn (``call_soon``): nothing waits
longer than the turn it was written in, and frames keep their order. ``drain``, ``write_eof``
and ``close`` send what is gathered first, so a frame aiormq drains for (a close, a heartbeat,
anything sent with ``wait=True``) leaves as before. Measured (docs/benchmarks.md, "One
write per event-loop turn"): the writer's write calls at 1,000 msg/s fell by 60 %, RabbitMQ's CPU by about a tenth.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.connection import DEFAULT_PORTS, TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

STREAM_LIMIT = 2**16  # asyncio.open_connection's default buffer limit for the reader


class CoalescingWriter(asyncio.StreamWriter):
    """A StreamWriter whose ``write`` sends at the end of the loop turn, all of the turn's data at once."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._turn_loop = loop
        self._gathered: list[bytes] = []
        self._send_at: asyncio.Handle | None = None
        self.sends = 0  # transport writes made, each usually one syscall (the unit tests count them)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._gathered.append(bytes(data))
        if self._send_at is None:
            self._send_at = self._turn_loop.call_soon(self._send)

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def _send(self) -> None:
        self._send_at = None
        gathered, self._gathered = self._gathered, []
        if not gathered or self.transport.is_closing():
            return  # the connection is going: what was not sent is redelivered or unconfirmed
        self.sends += 1
        super().write(gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def _send_now(self) -> None:
        if self._send_at is not None:
            self._send_at.cancel()
        self._send()

    async def drain(self) -> None:
        self._send_now()
        await super().drain()

    def write_eof(self) -> None:
        self._send_now()
        super().write_eof()

    def close(self) -> None:
        self._send_now()
        super().close()


class CoalescingTransportFactory(TransportFactory):
    """aiormq's TCP (``amqp://``) and TLS (``amqps://``) connection, with a :class:`CoalescingWriter`.

    It opens the connection itself, as aiormq's ``TCPTransportFactory`` and ``TLSTransportFactory``
    do, rather than wrapping the writer one of those returns: a second StreamWriter on the same
    transport would leave the first to the collector, and ``StreamWriter.__del__`` closes a
    transport that is still open."""

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider is not None else None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                # aiormq has filled the port in already; the fallbacks are aiormq's own defaults
                lambda: protocol,
                url.host or "localhost",
                url.port or DEFAULT_PORTS[url.scheme],
                ssl=ssl,
                **kwargs,
            )
        except OSError as exc:  # as aiormq's own factories report it
            raise AMQPConnectionError(*exc.args) from exc
        return reader, CoalescingWriter(transport, protocol, reader, loop)
