"""A loopback TCP proxy: one address in front of servers, as a Kubernetes Service presents them.

Each new connection goes to the first of ``upstreams`` that accepts it. Tests point it elsewhere
(``upstreams = [...]``) when a fail-over moves the primary, as a Service follows its ready pods,
and ``cut()`` breaks every connection through it, as a network split would.
"""

from __future__ import annotations

import asyncio


class TcpProxy:
    def __init__(self, upstreams: list[tuple[str, int]]) -> None:
        self.upstreams = list(upstreams)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @classmethod
    async def start(cls, upstreams: list[tuple[str, int]]) -> TcpProxy:
        proxy = cls(upstreams)
        proxy.server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        proxy.port = proxy.server.sockets[0].getsockname()[1]
        return proxy

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for host, port in list(self.upstreams):
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            except (OSError, asyncio.TimeoutError):
                continue
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:  # nothing behind the address takes connections: refuse, as a Service would
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        self.writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.writers -= {writer, up_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()  # one side gone: the other goes too, as with a dead server

    def cut(self) -> None:
        """Break every connection through the proxy (new ones are still accepted)."""
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.cut()
