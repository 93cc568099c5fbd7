"""Deliveries from this gateway's own queue (chat.gateway.<instance>) to its local sockets."""

from __future__ import annotations

import time

import prometheus_client

from shared import envelope, tracing

from .hub import Hub, text_frame

# What users feel: from the gateway accepting a send-message to this gateway handing the frame
# to its recipients' sockets, one sample per frame per gateway (every socket of a frame gets it at
# the same moment, so a sample per socket repeated the same figure, and cost a lock per socket).
# Gateways' clocks are compared, so keep them in sync (NTP), as any cluster does.
DELIVERY_SECONDS = prometheus_client.Histogram(
    "chat_message_delivery_seconds",
    "Send-to-delivery latency: a send accepted by a gateway to its frame queued to the recipients' sockets",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10),
)


class Deliverer:
    """The gateway's consumer handler (shared.amqp.Handler): writes each frame to its sockets.

    Takes ``{"v":1,"items":[["<frame json>",["alice","bob"],null],["<error frame>",[],"<conn id>"]]}``
    and pushes each frame to every local connection of those users (or to that one connection).
    Each frame is built once for all its sockets, and each socket gets everything of a batch in
    one write. Pushing never waits: a socket that cannot keep up is closed with 1013.
    """

    kind = "gateway"

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def decode(self, body: bytes) -> list[envelope.Delivery]:
        return envelope.decode(envelope.Deliveries, body).items

    def encode(self, items: list[envelope.Delivery]) -> bytes:
        return envelope.encode(envelope.Deliveries(items=items))

    async def handle(self, items: list[envelope.Delivery]) -> None:
        now = time.time()
        for item in items:
            sockets = 0
            wire = b""  # built at the first local socket: a broadcast reaches gateways that have none
            for conn in self.hub.targets(item.users, item.conn):
                wire = wire or text_frame(item.frame)
                conn.push_wire(wire)
                sockets += 1
            if sockets and item.accepted_at is not None:
                DELIVERY_SECONDS.observe(max(0.0, now - item.accepted_at))
            if item.trace is not None:
                tracing.record("gateway.deliver", item.trace, now, sockets=sockets)

    async def rejected(self, item: envelope.Delivery, reason: str) -> None:
        """Nothing waits for a delivery: its frame is set aside in chat.dead."""
