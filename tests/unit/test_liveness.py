"""The gateway-wide timers, pure: token deadlines by second (gateway/expiry.py) and the liveness
sweep (gateway/liveness.py) over connections with a recording transport."""

from __future__ import annotations

import asyncio

import pytest

from gateway.expiry import Expiries
from gateway.hub import Connection, Hub
from gateway.liveness import PING, pong, sweep


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Session:
    def __init__(self, name: str) -> None:
        self.name = name

    def expired(self) -> None:  # pragma: no cover - the table only looks at what is due
        raise AssertionError


def test_deadlines_fall_due_in_their_second_and_not_before():
    clock = Clock(1000.0)
    expiries = Expiries(clock)
    a, b, c, late = Session("a"), Session("b"), Session("c"), Session("late")
    expiries.set(a, 1001.2)
    expiries.set(b, 1001.9)
    expiries.set(c, 999.0)  # already past: due at the next look
    expiries.set(late, 5000.0)
    assert expiries.due() == [c]
    clock.now = 1001.5
    assert expiries.due() == []  # a's second (1002) has not come
    clock.now = 1002.0
    assert expiries.due() == [a, b]
    assert expiries.due() == [] and len(expiries) == 1


def test_a_new_deadline_replaces_the_old_one_and_a_closed_session_is_forgotten():
    clock = Clock(1000.0)
    expiries = Expiries(clock)
    moved, closed = Session("moved"), Session("closed")
    expiries.set(moved, 1002.0)
    expiries.set(moved, 1010.0, previous=1002.0)  # a fresh token (authenticate)
    expiries.set(closed, 1002.0)
    expiries.discard(closed, 1002.0)
    clock.now = 1005.0
    assert expiries.due() == []
    clock.now = 1010.0
    assert expiries.due() == [moved] and len(expiries) == 0


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.aborted

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.aborted = True


class Ws:
    closed = False


def connection(hub: Hub, user: str) -> tuple[Connection, Transport]:
    conn = Connection(Ws(), user)  # type: ignore[arg-type]
    transport = Transport()
    conn.start(transport)  # type: ignore[arg-type]
    hub.add(conn)
    return conn, transport


@pytest.mark.asyncio
async def test_a_silent_socket_is_pinged_then_dropped_and_a_talking_one_is_left_alone():
    hub = Hub()
    silent, silent_wire = connection(hub, "ghost")
    talking, talking_wire = connection(hub, "alice")
    answering, answering_wire = connection(hub, "bob")
    for step in range(4):
        talking.heard = True  # frames keep coming
        if step == 3:
            answering.heard = True  # it answers the ping of the sweep before
        await sweep(hub)
        await asyncio.sleep(0)  # the writes of this turn
    assert silent_wire.written == [PING] and silent_wire.aborted  # pinged at the 2nd sweep, dropped at the 3rd
    assert talking_wire.written == [] and not talking_wire.aborted
    assert answering_wire.written == [PING] and not answering_wire.aborted


def test_a_pong_echoes_the_ping():
    assert pong(b"") == b"\x8a\x00"
    assert pong(b"abc") == b"\x8a\x03abc"
