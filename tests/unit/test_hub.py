"""The gateway's write path: a frame built once is what aiohttp would have sent, a socket gets a
batch's frames in one write and in order, and a socket too far behind is closed with 1013."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter
from hypothesis import given
from hypothesis import strategies as st

from gateway.hub import BACKLOG_BYTES, OUTBOX_BYTES, RETRY_SECONDS, TRY_AGAIN_LATER, Connection, text_frame


class Transport:
    """What the connection needs of an asyncio transport: writes, a buffer size, a closing flag."""

    def __init__(self, buffered: int = 0) -> None:
        self.writes: list[bytes] = []
        self.buffered = buffered

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False


class Socket:
    """What the connection needs of a WebSocketResponse: ``closed`` and ``close``."""

    def __init__(self) -> None:
        self.closed = False
        self.close_codes: list[int] = []

    async def close(self, *, code: int, message: bytes) -> bool:
        self.close_codes.append(code)
        self.closed = True
        return True


def aiohttp_frame(text: str) -> bytes:
    transport = Transport()
    writer = WebSocketWriter(None, transport)  # type: ignore[arg-type]
    writer._write_websocket_frame(text.encode(), WSMsgType.TEXT, 0)
    return b"".join(transport.writes)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_frame_of_any_length_class_is_the_one_aiohttp_writes(size):
    text = "x" * size
    assert text_frame(text) == aiohttp_frame(text)


@given(st.text())
def test_any_text_frames_as_aiohttp_frames_it(text):
    assert text_frame(text) == aiohttp_frame(text)


def connection(transport: Transport) -> tuple[Connection, Socket]:
    ws = Socket()
    conn = Connection(ws, "alice")  # type: ignore[arg-type]
    conn.start(transport)  # type: ignore[arg-type]
    return conn, ws


async def test_frames_pushed_in_one_turn_leave_in_one_write_in_order():
    transport = Transport()
    conn, _ = connection(transport)
    for i in range(3):
        conn.push(f'{{"n":{i}}}')
    assert transport.writes == []  # nothing is written while the batch is being handled
    await asyncio.sleep(0)
    assert transport.writes == [b"".join(text_frame(f'{{"n":{i}}}') for i in range(3))]
    assert conn.sent == 3
    conn.push("later")
    await asyncio.sleep(0)
    assert transport.writes[1:] == [text_frame("later")]


BIG = "x" * 4096
OVER_THE_BOUND = OUTBOX_BYTES // 4096 + 10  # frames of BIG that add up to more than OUTBOX_BYTES


async def test_a_socket_too_far_behind_is_closed_with_1013_and_written_no_more():
    transport = Transport(buffered=BACKLOG_BYTES + 1)  # its reader is behind
    conn, ws = connection(transport)
    for _ in range(OVER_THE_BOUND):
        conn.push(BIG)
    await asyncio.sleep(0)
    await conn.stop()
    assert transport.writes == [] and ws.close_codes == [TRY_AGAIN_LATER]
    conn.push("more")
    await asyncio.sleep(0)
    assert transport.writes == []


async def test_a_reader_that_falls_behind_and_catches_up_gets_every_frame_in_order():
    transport = Transport(buffered=BACKLOG_BYTES + 1)
    conn, ws = connection(transport)
    for i in range(3):
        conn.push(f'{{"n":{i}}}')
    await asyncio.sleep(0)
    assert transport.writes == []  # held while the reader is behind
    transport.buffered = 0  # it read what was waiting
    await asyncio.sleep(RETRY_SECONDS * 3)
    assert transport.writes == [b"".join(text_frame(f'{{"n":{i}}}') for i in range(3))]
    assert ws.close_codes == []


async def test_a_burst_bigger_than_the_bound_reaches_a_reader_that_keeps_up():
    transport = Transport()
    conn, ws = connection(transport)
    for _ in range(OVER_THE_BOUND):
        conn.push(BIG)
    await asyncio.sleep(0)
    assert ws.close_codes == [] and len(transport.writes) == 1
    assert len(transport.writes[0]) > OUTBOX_BYTES


async def test_a_neighbour_of_a_slow_socket_is_written_as_usual():
    slow, fine = Transport(buffered=BACKLOG_BYTES + 1), Transport()
    (slow_conn, slow_ws), (fine_conn, fine_ws) = connection(slow), connection(fine)
    wire = text_frame(BIG)
    for _ in range(OVER_THE_BOUND):
        for conn in (slow_conn, fine_conn):
            conn.push_wire(wire)
    await asyncio.sleep(0)
    await slow_conn.stop()
    assert slow_ws.close_codes == [TRY_AGAIN_LATER] and slow.writes == []
    assert fine_ws.close_codes == [] and fine.writes == [wire * OVER_THE_BOUND]
