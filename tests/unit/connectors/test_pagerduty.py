"""PagerDuty Events API v2 against a local peer: a trigger event per notification."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.base import OutboundMessage
from connectors.pagerduty import PagerDutyConfig, PagerDutyConnector
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"
ALERT = message(
    channel="alert",
    to="oncall",
    priority="high",
    category="orders",
    data_json='{"order_id": 42, "source": "checkout-api", "component": "payments"}',
)


def connector(peer: HttpPeer, **overrides: Any) -> PagerDutyConnector:
    values: dict[str, Any] = {
        "base_url": peer.url,
        "timeout_seconds": TEST_TIMEOUT_SECONDS,
        "routing_key": ROUTING_KEY,
    }
    values.update(overrides)
    return PagerDutyConnector(PagerDutyConfig(**values), egress=LOCAL_PEERS)


def expected_event(alert: OutboundMessage = ALERT) -> dict[str, Any]:
    return {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "n-1",
        "payload": {
            "summary": "Your order shipped",
            "source": "checkout-api",
            "severity": "error",
            "component": "payments",
            "class": "orders",
            "custom_details": {
                "order_id": 42,
                "source": "checkout-api",
                "component": "payments",
                "notification_id": "n-1",
                "tenant_id": "acme",
                "text": "Order 42 is on its way.",
            },
        },
    }


SUCCESS = [
    Case(
        "202-accepted",
        Reply(202, json={"status": "success", "message": "Event processed", "dedup_key": "n-1"}),
        {"outcome": "sent", "provider": "pagerduty", "provider_message_id": "n-1"},
    ),
]

PAGERDUTY_ERRORS = [
    Case(
        "400-invalid-event",
        Reply(
            400,
            json={
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": ["'payload.summary' is missing or blank"],
            },
        ),
        {"outcome": "failed", "retriable": False, "provider_fault": False},
    ),
    Case(
        "400-bad-routing-key",
        Reply(
            400,
            json={
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": ["Length of 'routing_key' is incorrect (should be 32 characters)"],
            },
        ),
        {"outcome": "failed", "retriable": False, "provider_fault": True},
    ),
    Case(
        "429-no-retry-after",
        Reply(429, body=b"Request Limit Exceeded"),
        {"outcome": "failed", "retriable": True, "retry_after": None},
    ),
    Case(
        "500",
        Reply(500, json={"status": "error"}),
        {"outcome": "failed", "retriable": True, "provider_fault": True},
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in SUCCESS + STANDARD_FAULTS + PAGERDUTY_ERRORS])
async def test_pagerduty_answers_become_results_and_the_event_matches_the_api(
    case: Case, peer: HttpPeer
) -> None:
    peer.reply(case.reply)
    pagerduty = connector(peer)
    result = await pagerduty.deliver(ALERT)
    await pagerduty.close()

    assert_result(result, case.expect)
    assert result.provider == "pagerduty"
    assert result.reason is None or ROUTING_KEY not in result.reason
    [request] = peer.requests
    assert request.method == "POST"
    assert request.path == "/v2/enqueue"
    assert request.headers["content-type"] == "application/json"
    # The routing key authenticates the event; there is no Authorization header.
    assert "authorization" not in request.headers
    assert request.json() == expected_event()


@pytest.mark.parametrize(
    ("priority", "severity"),
    [("critical", "critical"), ("high", "error"), ("normal", "warning"), ("low", "info")],
)
async def test_severity_follows_priority(peer: HttpPeer, priority: str, severity: str) -> None:
    pagerduty = connector(peer)
    await pagerduty.deliver(ALERT.model_copy(update={"priority": priority}))
    await pagerduty.close()
    assert peer.requests[-1].json()["payload"]["severity"] == severity


async def test_summary_falls_back_to_the_text_and_is_capped_at_1024(peer: HttpPeer) -> None:
    long = ALERT.model_copy(update={"subject": None, "text": "x" * 2000, "data_json": "{}"})
    pagerduty = connector(peer, source="billing")
    await pagerduty.deliver(long)
    await pagerduty.close()
    payload = peer.requests[-1].json()["payload"]
    assert len(payload["summary"]) == 1024 and payload["summary"].endswith("…")
    assert payload["source"] == "billing"
    # The summary is the text already, so it is not repeated in custom_details.
    assert payload["custom_details"] == {"notification_id": "n-1", "tenant_id": "acme"}


async def test_retries_reuse_the_dedup_key_and_long_keys_are_hashed_stably(
    peer: HttpPeer,
) -> None:
    pagerduty = connector(peer)
    await pagerduty.deliver(ALERT.model_copy(update={"attempt": 0}))
    await pagerduty.deliver(ALERT.model_copy(update={"attempt": 1}))
    long_key = ALERT.model_copy(update={"idempotency_key": "k" * 300})
    await pagerduty.deliver(long_key)
    await pagerduty.deliver(long_key)
    await pagerduty.close()
    keys = [request.json()["dedup_key"] for request in peer.requests]
    assert keys[0] == keys[1] == "n-1"
    assert keys[2] == keys[3] and len(keys[2]) == 64


def test_routing_key_is_secret() -> None:
    config = PagerDutyConfig(routing_key=ROUTING_KEY)
    assert config.base_url == "https://events.pagerduty.com"
    assert ROUTING_KEY not in repr(config) and ROUTING_KEY not in str(config)
