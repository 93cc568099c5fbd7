"""Deliveries from this gateway's own queue (chat.gateway.<instance>) to its local sockets."""

from __future__ import annotations

from shared import envelope

from .hub import Hub


class Deliverer:
    """The gateway's consumer handler (shared.amqp.Handler): writes each frame to its sockets.

    Takes ``{"v":1,"items":[["<frame json>",["alice","bob"],null],["<error frame>",[],"<conn id>"]]}``
    and pushes each frame to every local connection of those users (or to that one connection).
    Pushing never waits: a socket that cannot keep up is closed with 1013 by its own outbox.
    """

    kind = "gateway"

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def decode(self, body: bytes) -> list[envelope.Delivery]:
        return envelope.decode(envelope.Deliveries, body).items

    def encode(self, items: list[envelope.Delivery]) -> bytes:
        return envelope.encode(envelope.Deliveries(items=items))

    async def handle(self, items: list[envelope.Delivery]) -> None:
        for item in items:
            for conn in self.hub.targets(item.users, item.conn):
                conn.push(item.frame)

    async def rejected(self, item: envelope.Delivery, reason: str) -> None:
        """Nothing waits for a delivery: its frame is set aside in chat.dead."""
