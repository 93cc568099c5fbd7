"""The gateway's app state, held under one typed AppKey."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from shared.amqp import Broker
from shared.auth import TokenVerifier
from shared.ops import Readiness
from shared.registry import Registry
from shared.settings import GatewaySettings

from .expiry import Expiries
from .hub import Hub
from .leases import Lease
from .publisher import CommandPublisher


@dataclass
class Gateway:
    settings: GatewaySettings
    readiness: Readiness
    verifier: TokenVerifier
    registry: Registry
    broker: Broker
    publisher: CommandPublisher
    hub: Hub
    lease: Lease
    expiries: Expiries


GATEWAY = web.AppKey("gateway", Gateway)
