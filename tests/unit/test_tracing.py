"""Trace context across a hop: what a stage puts on the messages it produces."""

from __future__ import annotations

import re

import pytest

from core import tracing

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
# Flags: bit 0 sampled; the SDK also sets bit 1 (random trace id, W3C level 2) on new roots.
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]")


@pytest.fixture(params=[False, True], ids=["direct", "sdk-span"])
def exported(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both paths: written directly (no exporter) and through an SDK span (an exporter)."""
    monkeypatch.setattr(tracing, "_SPANS_EXPORTED", request.param)
    return bool(request.param)


def _parts(headers: dict[str, bytes]) -> list[str]:
    value = headers["traceparent"].decode()
    assert TRACEPARENT.fullmatch(value), value
    return value.split("-")


def test_a_child_keeps_the_trace_and_gets_its_own_span(exported: bool) -> None:
    _, trace_id, span_id, flags = _parts(tracing.child_headers({"traceparent": PARENT.encode()}))
    assert trace_id == PARENT.split("-")[1]
    assert span_id != PARENT.split("-")[2]
    assert flags == "01"


def test_an_unsampled_parent_gives_an_unsampled_child_with_its_tracestate(exported: bool) -> None:
    incoming = [("traceparent", PARENT[:-2].encode() + b"00"), ("tracestate", b"vendor=1")]
    headers = tracing.child_headers(incoming)
    assert _parts(headers)[3] == "00"
    assert headers["tracestate"] == b"vendor=1"


@pytest.mark.parametrize(
    "incoming",
    [
        None,
        {},
        {"traceparent": b"garbage"},
        {"traceparent": b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"traceparent": b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        {"traceparent": b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},
        {"traceparent": (PARENT + "-extra").encode()},  # version 00 has exactly four fields
    ],
)
def test_no_valid_parent_starts_a_new_trace(exported: bool, incoming: object) -> None:
    _, trace_id, _, _ = _parts(tracing.child_headers(incoming))  # type: ignore[arg-type]
    assert trace_id != PARENT.split("-")[1]


def test_a_later_version_with_more_fields_is_read_as_level_1(exported: bool) -> None:
    later = "01" + PARENT[2:] + "-whatever"
    assert _parts(tracing.child_headers({"traceparent": later.encode()}))[1] == PARENT.split("-")[1]
