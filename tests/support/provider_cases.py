"""Table rows every HTTP provider's test shares: the peer's answer and the expected result.

A provider test parametrizes over its own success rows plus `STANDARD_FAULTS` (and any
provider-specific error rows), sends one message through the real connector to an HttpPeer,
then checks both the result and the exact request the provider's API expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from connectors.base import DeliveryResult, OutboundMessage
from connectors.egress import Egress
from tests.support.http_peer import HttpPeer, Reply

# Connector configs in tests use this timeout; the `timeout` row answers slower than that.
TEST_TIMEOUT_SECONDS = 0.5
# The peers listen on 127.0.0.1, which the SSRF guard refuses by default: tests that talk to
# them lift it explicitly, by building their connectors with this.
LOCAL_PEERS = Egress(allow_private=True)


@dataclass(frozen=True)
class Case:
    id: str
    reply: Reply
    expect: dict[str, Any] = field(default_factory=dict)  # DeliveryResult fields to check

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


STANDARD_FAULTS = [
    Case(
        "400-bad-request",
        Reply(400, json={"error": "invalid parameter"}),
        {"outcome": "failed", "retriable": False, "provider_fault": False},
    ),
    Case(
        "401-credentials",
        Reply(401, json={"error": "unauthorized"}),
        {"outcome": "failed", "retriable": False, "provider_fault": True},
    ),
    Case(
        "429-retry-after",
        Reply(429, json={"error": "slow down"}, headers={"Retry-After": "7"}),
        {"outcome": "failed", "retriable": True, "retry_after": 7.0},
    ),
    Case(
        "503-outage",
        Reply(503, json={"error": "unavailable"}),
        {"outcome": "failed", "retriable": True, "provider_fault": True},
    ),
    Case(
        "timeout",
        Reply(200, json={}, delay=TEST_TIMEOUT_SECONDS + 1.0),
        {"outcome": "failed", "retriable": True, "provider_fault": True},
    ),
]


def assert_result(result: DeliveryResult, expect: dict[str, Any]) -> None:
    actual = {name: getattr(result, name) for name in expect}
    assert actual == expect, f"{result!r}"


def message(**overrides: Any) -> OutboundMessage:
    """A representative message; providers override `channel` and `to`."""
    values: dict[str, Any] = {
        "notification_id": "n-1",
        "tenant_id": "acme",
        "channel": "email",
        "to": "ada@example.test",
        "subject": "Your order shipped",
        "text": "Order 42 is on its way.",
        "html": "<p>Order 42 is on its way.</p>",
        "idempotency_key": "n-1",
        "recipient_id": "u-1",
    }
    values.update(overrides)
    return OutboundMessage(**values)


@pytest.fixture(scope="module")
def http_peer() -> Iterator[HttpPeer]:
    with HttpPeer() as peer:
        yield peer


@pytest.fixture
def peer(http_peer: HttpPeer) -> Iterator[HttpPeer]:
    """The module's peer, with an empty script and record for each test."""
    http_peer.reset()
    yield http_peer
    http_peer.reset()
