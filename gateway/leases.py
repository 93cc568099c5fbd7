"""This gateway's lease in Redis (shared/registry.py): one renewal every ``REFRESH_SECONDS``,
whatever the number of sockets.

- ``ok``: the lease is extended for ``LEASE_SECONDS``. Then, apart (its failures are not the
  renewal's), closed sockets Redis missed are unregistered and dead leases swept.
- ``moved``: Redis restarted or failed over (or this is the first renewal). A new lease is
  taken and every socket registered under it, in batches, between which the event loop serves
  everyone else; the notifier broadcasts meanwhile, so nothing is missed. The old lease is
  retired.
- ``lapsed``: the lease expired on this Redis (the process was paused, or Redis unreachable for
  long): notifiers stopped targeting these sockets a while ago, so they may have missed events.
  Every socket is closed with 1012 (its client reconnects and catches up over REST) and a new
  lease is taken for new ones.

When Redis cannot be reached, renewal is retried every second; if it still fails as the lease is
about to lapse, every socket is closed with 1012 for the same reason.
"""

from __future__ import annotations

import asyncio
import time

import prometheus_client

from shared.log import get_logger
from shared.registry import LEASE_SECONDS, REDIS_ERRORS, REFRESH_SECONDS, Registry, new_lease

from .hub import Connection, Hub

log = get_logger(__name__)
SERVICE_RESTART = 1012
MARGIN_SECONDS = 5.0  # close this long before the lease would lapse
REGISTER_BATCH = 500  # sockets registered again per Redis call after a move
LEFTOVER_LIMIT = 100_000  # closed sockets remembered for unregistering once Redis is back
LEFTOVER_BATCH = 1000  # of them unregistered after each renewal
SWEEP_STEPS = 20  # sweep steps per renewal (each frees up to shared.registry.SWEEP_USERS users)

LAPSED = prometheus_client.Counter(
    "chat_gateway_lease_lapse_closes_total",
    "Times every socket was closed with 1012 because the gateway's lease lapsed or could not be renewed",
)
MOVES = prometheus_client.Counter(
    "chat_gateway_registry_moves_total",
    "Times every socket was registered again because Redis restarted or failed over",
)


class Lease:
    """The lease sockets are admitted under (``id``), kept alive by :meth:`run`."""

    def __init__(self, registry: Registry, hub: Hub, instance_id: str) -> None:
        self.registry = registry
        self.hub = hub
        self.instance_id = instance_id
        self.id = new_lease(instance_id)
        self.run = ""  # the Redis server the lease is held on ("": none yet)
        self.held = False
        self._retired: list[str] = []
        self._leftover: dict[str, tuple[str, str]] = {}  # conn -> (lease, user): unregistering failed

    async def check(self) -> bool:
        """Readiness: Redis answers and the lease is held (sockets can be admitted)."""
        return self.held and await self.registry.check()

    async def renew(self) -> None:
        """One renewal (raises what Redis raises)."""
        status, run = await self.registry.renew(self.id, self.run)
        if status != "ok":
            lease = new_lease(self.instance_id)
            self.run = await self.registry.take(lease)
            self._retired.append(self.id)
            self.id = lease
            if status == "lapsed" and self.hub.by_id:
                LAPSED.inc()
                log.warning("lease_lapsed_closing_sockets", connections=len(self.hub.by_id))
                self.hub.close_soon_all(SERVICE_RESTART, "connection registry lost this gateway")
            elif status == "moved" and self.held:
                MOVES.inc()
                log.warning("registry_moved", connections=len(self.hub.by_id), run=run)
        self.held = True
        await self._register_again()
        while self._retired:
            await self.registry.retire(self._retired[-1])
            self._retired.pop()

    async def tidy(self) -> None:
        """Work that can wait for the next renewal, kept out of the renewal itself (a backlog here
        must never look like a lease that cannot be renewed): closed sockets Redis missed, a
        bounded number at a time, then a few steps of sweeping dead leases."""
        for _ in range(min(len(self._leftover), LEFTOVER_BATCH)):
            conn_id, (lease, user_id) = next(iter(self._leftover.items()))
            await self.registry.unregister(lease, user_id, conn_id)
            del self._leftover[conn_id]
        for _ in range(SWEEP_STEPS):
            if not await self.registry.sweep():
                break

    async def _register_again(self) -> None:
        """Register under the current lease every open socket admitted under an earlier one."""
        lease = self.id
        stale = [c for c in self.hub.by_id.values() if c.lease != lease and not c.closing]
        for start in range(0, len(stale), REGISTER_BATCH):
            batch = stale[start : start + REGISTER_BATCH]
            await self.registry.register(lease, [(c.user_id, c.id) for c in batch])
            for conn in batch:
                conn.lease = lease
            await self._forget_closed(lease, batch)

    async def adopt(self, conn: Connection) -> None:
        """``conn`` was admitted under a lease replaced before it joined the hub: register it
        under the current one."""
        if conn.lease != self.id:
            lease = self.id
            await self.registry.register(lease, [(conn.user_id, conn.id)])
            conn.lease = lease
            await self._forget_closed(lease, [conn])

    async def _forget_closed(self, lease: str, conns: list[Connection]) -> None:
        # a socket that closed while it was being registered may have left before its member
        # was added: remove it again
        for conn in conns:
            if conn.id not in self.hub.by_id:
                await self.registry.unregister(lease, conn.user_id, conn.id)

    def unregister_later(self, conn: Connection) -> None:
        """Redis failed to take ``conn`` off the registry: retry at the next renewal (a listed
        closed socket would cost wasted deliveries and count against its user's socket cap)."""
        if len(self._leftover) < LEFTOVER_LIMIT:
            self._leftover[conn.id] = (conn.lease, conn.user_id)

    async def release(self) -> None:
        """Shutdown: end the lease (one command for every socket; a sweep frees the members)."""
        self.held = False
        await self.registry.retire(self.id)


async def renew_leases(lease: Lease) -> None:
    """The owner's loop (cancelled at shutdown)."""
    renewed_at = time.monotonic()
    while True:
        try:
            await asyncio.wait_for(lease.renew(), 10)
            renewed_at = time.monotonic()
            delay = float(REFRESH_SECONDS)
            try:
                await asyncio.wait_for(lease.tidy(), 5)
            except REDIS_ERRORS as exc:
                log.warning("lease_tidy_failed", error=exc.__class__.__name__)
        except REDIS_ERRORS as exc:
            log.warning("lease_refresh_failed", error=exc.__class__.__name__)
            delay = 1.0
            if time.monotonic() - renewed_at > LEASE_SECONDS - MARGIN_SECONDS and lease.hub.by_id:
                LAPSED.inc()
                log.warning("leases_lapsing_closing_sockets", connections=len(lease.hub.by_id))
                lease.hub.close_soon_all(SERVICE_RESTART, "connection registry unavailable")
        await asyncio.sleep(delay)
