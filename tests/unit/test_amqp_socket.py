"""The AMQP socket's writer: one loop turn's frames leave in one write, in order, and drain sends at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

from shared.amqp_socket import CoalescingTransportFactory, CoalescingWriter


@pytest_asyncio.fixture
async def pair() -> AsyncIterator[tuple[CoalescingWriter, asyncio.StreamReader]]:
    accepted: asyncio.Future[asyncio.StreamReader] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(reader)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await CoalescingTransportFactory().create(URL(f"amqp://127.0.0.1:{port}/"))
    assert isinstance(writer, CoalescingWriter)
    try:
        yield writer, await accepted
    finally:
        writer.close()
        server.close()


async def test_frames_written_in_one_turn_leave_in_one_write_in_order(pair) -> None:
    writer, peer = pair
    for frame in (b"publish-1;", b"publish-2;", b"ack;"):
        writer.write(frame)
    assert writer.sends == 0  # nothing has left during the turn that wrote it
    await asyncio.sleep(0)  # the end of the turn
    assert writer.sends == 1
    assert await peer.readexactly(24) == b"publish-1;publish-2;ack;"


async def test_frames_of_different_turns_are_not_held_back(pair) -> None:
    writer, peer = pair
    writer.write(b"first;")
    await asyncio.sleep(0)
    assert await peer.readexactly(6) == b"first;"  # it left without waiting for anything more
    writer.write(b"second;")
    await asyncio.sleep(0)
    assert writer.sends == 2
    assert await peer.readexactly(7) == b"second;"


async def test_drain_and_close_send_what_is_gathered_at_once(pair) -> None:
    writer, peer = pair
    writer.write(b"heartbeat;")
    await writer.drain()
    assert writer.sends == 1
    assert await peer.readexactly(10) == b"heartbeat;"
    writer.write(b"connection-close;")
    writer.close()  # aiormq writes its Connection.Close and closes in the same turn
    assert await peer.read() == b"connection-close;"


async def test_a_refused_connection_is_aiormqs_connection_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(AMQPConnectionError):
        await CoalescingTransportFactory().create(URL(f"amqp://127.0.0.1:{port}/"))
