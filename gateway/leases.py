"""Renewing this gateway's connection leases in Redis (shared/registry.py).

Every ``REFRESH_SECONDS`` every local connection's lease is renewed for ``LEASE_SECONDS``. When
Redis cannot be reached, renewal is retried every second; if it still fails as the leases are
about to lapse, notifiers will soon find nobody here, so every socket is closed with 1012 and
its client reconnects (to a gateway that can register it) and catches up over REST, rather than
wait on a socket that events can no longer find.
"""

from __future__ import annotations

import asyncio
import time

import prometheus_client

from shared.log import get_logger
from shared.registry import LEASE_SECONDS, REDIS_ERRORS, REFRESH_SECONDS

from .state import Gateway

log = get_logger(__name__)
SERVICE_RESTART = 1012
MARGIN_SECONDS = 5.0  # close this long before the oldest lease would lapse

LAPSED = prometheus_client.Counter(
    "chat_gateway_lease_lapse_closes_total",
    "Times every socket was closed with 1012 because leases could not be renewed",
)


async def renew_leases(gw: Gateway) -> None:
    """The owner's loop (cancelled at shutdown)."""
    renewed_at = time.monotonic()
    while True:
        try:
            await asyncio.wait_for(gw.registry.register(gw.settings.instance_id, gw.hub.pairs()), 5)
            renewed_at = time.monotonic()
            delay = float(REFRESH_SECONDS)
        except REDIS_ERRORS as exc:
            log.warning("lease_refresh_failed", error=exc.__class__.__name__)
            delay = 1.0
            if time.monotonic() - renewed_at > LEASE_SECONDS - MARGIN_SECONDS and gw.hub.by_id:
                LAPSED.inc()
                log.warning("leases_lapsing_closing_sockets", connections=len(gw.hub.by_id))
                gw.hub.close_soon_all(SERVICE_RESTART, "connection registry unavailable")
        await asyncio.sleep(delay)
