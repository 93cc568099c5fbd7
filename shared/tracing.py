"""One trace per message across the services: W3C trace context carried in the envelope.

Off unless ``CHAT_OTLP_ENDPOINT`` is set, and then free: nothing of OpenTelemetry is imported
and every function here returns at once. With an endpoint (and the ``tracing`` extra installed),
each hop opens a span whose parent is the ``traceparent`` the previous hop put in the envelope:

    gateway.accept (the send frame) -> writer.store (its transaction)
        -> notifier.route (the registry lookup and planning) -> gateway.deliver (to the sockets)

Spans are exported in batches over OTLP/HTTP. The context travels as a plain ``traceparent``
string in ``SendMessage``, ``MessageStored`` and ``Delivery`` (``trace``), so the bodies stay
JSON and a service without tracing passes it along untouched.
"""

from __future__ import annotations

import time
from typing import Any

_tracer: Any = None
_provider: Any = None


def configure(service: str, endpoint: str | None) -> None:
    """Start exporting spans to ``endpoint`` (an OTLP/HTTP base URL); no endpoint, no tracing."""
    global _tracer, _provider
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _provider = TracerProvider(resource=Resource.create({"service.name": f"chat-{service}"}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")))
    _tracer = _provider.get_tracer("pagenow-chat")


def shutdown() -> None:
    """Flush what is pending (at the end of a graceful shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def record(name: str, parent: str | None, start: float, end: float | None = None, **attributes: Any) -> str | None:
    """A finished span ``name`` from ``start`` to ``end`` (``time.time()`` seconds), child of the
    ``parent`` traceparent when given; returns its own traceparent for the next hop (None when off)."""
    if _tracer is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    context = propagator.extract({"traceparent": parent}) if parent else None
    span = _tracer.start_span(name, context=context, start_time=int(start * 1e9), attributes=attributes)
    span.end(end_time=int((time.time() if end is None else end) * 1e9))
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")
