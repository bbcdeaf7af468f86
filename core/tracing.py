"""W3C trace context carried in Kafka headers across every hop.

Each stage continues the trace found in the incoming `traceparent` header (or starts one)
and puts a child context on what it produces. Spans go nowhere unless an OpenTelemetry
exporter is configured by the operator; propagation works either way.
"""

from __future__ import annotations

import os
import re
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


# version-traceid-parentid-flags (W3C Trace Context, level 1); later versions may add fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
# Spans are worth building only when something exports them. Without an exporter the SDK
# would build and drop one per hop (~5% of a worker's CPU, measured), so the child context
# is written directly: same trace id and flags, a new span id.
_SPANS_EXPORTED = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def header_text(incoming: HeadersIn, name: str) -> str | None:
    if not incoming:
        return None
    items = incoming.items() if isinstance(incoming, Mapping) else incoming
    for key, value in items:
        if str(key).lower() == name:
            if isinstance(value, bytes | bytearray):
                return bytes(value).decode("ascii", errors="replace")
            return str(value)
    return None


def _direct_child_headers(incoming: HeadersIn) -> dict[str, bytes]:
    parent = header_text(incoming, "traceparent")
    match = _TRACEPARENT.fullmatch(parent.strip()) if parent else None
    if match is None:
        return {"traceparent": new_traceparent().encode()}
    version, trace_id, span_id, flags, rest = match.groups()
    invalid = version == "ff" or (version == "00" and rest is not None)
    if invalid or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return {"traceparent": new_traceparent().encode()}
    sampled = "01" if int(flags, 16) & 1 else "00"  # the only flag level 1 defines
    out = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-{sampled}".encode()}
    state = header_text(incoming, "tracestate")
    if state:
        out["tracestate"] = state.encode()
    return out


def child_headers(incoming: HeadersIn) -> dict[str, bytes]:
    """A traceparent for an outgoing message: a child of the incoming one, or a new root."""
    if not _SPANS_EXPORTED:
        return _direct_child_headers(incoming)
    parent = _propagator.extract(_as_text_map(incoming))
    span_context = trace.get_current_span(parent).get_span_context()
    if not span_context.is_valid:
        return {"traceparent": new_traceparent().encode()}
    carrier: dict[str, str] = {}
    with tracer.start_as_current_span("stage", context=parent):
        _propagator.inject(carrier)
    return {k: v.encode() for k, v in carrier.items()}
