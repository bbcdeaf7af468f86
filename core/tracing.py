"""W3C trace context carried in Kafka headers across every hop, and spans when exported.

Each stage continues the trace found in the incoming `traceparent` header (or starts one)
and puts a child context on what it produces. Propagation always works. Spans are built only
when OTEL_EXPORTER_OTLP_ENDPOINT is set (OTLP over HTTP/protobuf to a collector, Jaeger or
Tempo; the exporter reads the standard OTEL_* variables): then each message a stage
processes is a CONSUMER span `process <topic>` with the OpenTelemetry messaging attributes
for Kafka, what it produces are its children, and a provider call is a CLIENT span inside it.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_SDK_DISABLED = os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
# Spans are worth building only when something exports them. Without an exporter the SDK
# would build and drop one per hop (~5% of a worker's CPU, measured), so the child context
# is written directly: same trace id and flags, a new span id.
_SPANS_EXPORTED = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")) and not _SDK_DISABLED


def _provider() -> TracerProvider:
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the default name.
    provider = TracerProvider(resource=Resource.create({"service.name": "notifications"}))
    if _SPANS_EXPORTED:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


if not _SDK_DISABLED:
    trace.set_tracer_provider(_provider())
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


# Trace and span ids need to be unique, not secret: the SDK's own generator uses `random`
# too. `secrets` is an os.urandom system call per id (5% of the shim's CPU, measured).
def _span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


def new_traceparent() -> str:
    return f"00-{random.getrandbits(128) or 1:032x}-{_span_id()}-01"


# version-traceid-parentid-flags (W3C Trace Context, level 1); later versions may add fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


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
    out = {"traceparent": f"00-{trace_id}-{_span_id()}-{sampled}".encode()}
    state = header_text(incoming, "tracestate")
    if state:
        out["tracestate"] = state.encode()
    return out


def child_headers(incoming: HeadersIn, name: str = "send") -> dict[str, bytes]:
    """A traceparent for an outgoing message: a child of the span being processed, of the
    incoming context, or a new root. `name` names the PRODUCER span made when no span is
    current (the shim's sends)."""
    if not _SPANS_EXPORTED:
        return _direct_child_headers(incoming)
    carrier: dict[str, str] = {}
    if trace.get_current_span().is_recording():
        _propagator.inject(carrier)
    else:
        parent = _propagator.extract(_as_text_map(incoming))
        with tracer.start_as_current_span(name, context=parent, kind=SpanKind.PRODUCER):
            _propagator.inject(carrier)
    return {k: v.encode() for k, v in carrier.items()}


@contextmanager
def consuming(
    headers: HeadersIn, *, topic: str, partition: int, offset: int, group: str, stage: str
) -> Iterator[None]:
    """The CONSUMER span of processing one message (messaging semantic conventions)."""
    if not _SPANS_EXPORTED:
        yield
        return
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
        "messaging.consumer.group.name": group,
        "notifications.stage": stage,
    }
    parent = _propagator.extract(_as_text_map(headers))
    with tracer.start_as_current_span(
        f"process {topic}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ):
        yield


@contextmanager
def calling(name: str, **attributes: str) -> Iterator[None]:
    """A CLIENT span for a call out of the pipeline (a provider), inside the current one."""
    if not _SPANS_EXPORTED:
        yield
        return
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes):
        yield


def spans_exported() -> bool:
    return _SPANS_EXPORTED


def mark_failed(description: str) -> None:
    """Set the current span's status to error (a dead-lettered message, a failed call)."""
    if _SPANS_EXPORTED:
        trace.get_current_span().set_status(Status(StatusCode.ERROR, description[:500]))
