"""Start-up shared by the five commands: settings or a one-line error, logging, the event loop."""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from . import tracing
from .log import configure, get_logger
from .ops import ACCESS_LOGGER, AccessLog
from .settings import Common, SettingsError

S = TypeVar("S", bound=Common)


def settings_or_exit(command: str, loader: Callable[[], S]) -> S:
    try:
        settings = loader()
    except SettingsError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure(settings.service, settings.log_level, settings.instance_id)
    tracing.configure(settings.service, settings.otlp_endpoint)
    return settings


_fatal: list[str] = []


def fatal(message: str) -> None:
    """Stop this service for good: a graceful shutdown now, then exit status 2 with ``message``."""
    _fatal.append(message)
    signal.raise_signal(signal.SIGTERM)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        return
    uvloop.install()


GC_THRESHOLDS = (20_000, 50, 50)


async def _freeze(app: web.Application) -> None:
    gc.freeze()


def tune_gc() -> None:
    """Fewer, cheaper collections. Python's defaults collect the young generation every 700
    allocations and scan the whole heap every 100 young collections; a service allocates a few
    objects per frame, and a full scan held the gateway's loop for 130 ms at 600 msg/s
    (docs/benchmarks.md). What exists once the app has started (modules, pools, settings) is
    frozen out of every scan, and the thresholds are raised."""
    gc.set_threshold(*GC_THRESHOLDS)


def serve(app: web.Application, settings: Common, *, shutdown_timeout: float = 20.0) -> None:
    """Run ``app`` until SIGTERM/SIGINT; aiohttp then runs on_shutdown and the cleanup contexts."""
    install_uvloop()
    tune_gc()
    app.on_startup.append(_freeze)  # after the cleanup contexts' start: the long-lived objects exist
    get_logger(__name__).info("service_starting", host=settings.host, port=settings.port)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log_class=AccessLog,
        access_log=ACCESS_LOGGER,
        print=None,
        shutdown_timeout=shutdown_timeout,
        handle_signals=True,
    )
    tracing.shutdown()
    if _fatal:
        print(f"chat-{settings.service}: {_fatal[0]}", file=sys.stderr)
        raise SystemExit(2)
