"""W3C trace context carried in Kafka headers across every hop.

Each stage continues the trace found in the incoming `traceparent` header (or starts one)
and puts a child context on what it produces. Spans go nowhere unless an OpenTelemetry
exporter is configured by the operator; propagation works either way.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
if os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true":
    trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("notifications")

HeadersIn = Mapping[str, Any] | Iterable[tuple[str, Any]] | None


def _as_text_map(headers: HeadersIn) -> dict[str, str]:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = {}
    for key, value in items:
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("ascii", errors="replace")
        out[str(key)] = str(value)
    return out


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_headers(incoming: HeadersIn) -> dict[str, bytes]:
    """A traceparent for an outgoing message: a child of the incoming one, or a new root."""
    parent = _propagator.extract(_as_text_map(incoming))
    span_context = trace.get_current_span(parent).get_span_context()
    if not span_context.is_valid:
        return {"traceparent": new_traceparent().encode()}
    carrier: dict[str, str] = {}
    with tracer.start_as_current_span("stage", context=parent):
        _propagator.inject(carrier)
    return {k: v.encode() for k, v in carrier.items()}
