"""Opsgenie Alert API against a local peer: `POST /v2/alerts` with a GenieKey."""

from __future__ import annotations

import pytest

from connectors.opsgenie import EU_BASE_URL, OpsgenieConfig, OpsgenieConnector
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

API_KEY = "eb243592-faa2-4ba2-a551q-1afdf565c889"
REQUEST_ID = "43a29c5c-3dbf-4fa4-9c26-f4f71023e120"
ALERT = message(
    channel="alert",
    to="ops",
    priority="critical",
    data_json='{"order_id": 42, "region": "eu-west-1", "tags": ["orders", 7, "payments"]}',
)


def connector(peer: HttpPeer) -> OpsgenieConnector:
    return OpsgenieConnector(
        OpsgenieConfig(base_url=peer.url, timeout_seconds=TEST_TIMEOUT_SECONDS, api_key=API_KEY),
        egress=LOCAL_PEERS,
    )


EXPECTED_ALERT = {
    "message": "Your order shipped",
    "description": "Order 42 is on its way.",
    "alias": "n-1",
    "priority": "P1",
    # Opsgenie's details are strings only.
    "details": {
        "order_id": "42",
        "region": "eu-west-1",
        "notification_id": "n-1",
        "tenant_id": "acme",
    },
    "tags": ["orders", "payments"],
}

SUCCESS = [
    Case(
        "202-accepted",
        Reply(
            202,
            json={"result": "Request will be processed", "took": 0.302, "requestId": REQUEST_ID},
        ),
        {"outcome": "sent", "provider": "opsgenie", "provider_message_id": REQUEST_ID},
    ),
]

OPSGENIE_ERRORS = [
    Case(
        "422-validation",
        Reply(422, json={"message": "Message can not be empty.", "took": 0.001, "requestId": "r"}),
        {"outcome": "failed", "retriable": False, "provider_fault": False},
    ),
    Case(
        "402-plan",
        Reply(402, json={"message": "Your plan does not allow this", "requestId": "r"}),
        {"outcome": "failed", "retriable": False, "provider_fault": True},
    ),
    Case(
        "403-key-permissions",
        Reply(403, json={"message": "Key is not authorized to create alerts", "requestId": "r"}),
        {"outcome": "failed", "retriable": False, "provider_fault": True},
    ),
    Case(
        "500",
        Reply(500, json={"message": "Internal error"}),
        {"outcome": "failed", "retriable": True, "provider_fault": True},
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in SUCCESS + STANDARD_FAULTS + OPSGENIE_ERRORS])
async def test_opsgenie_answers_become_results_and_the_alert_matches_the_api(
    case: Case, peer: HttpPeer
) -> None:
    peer.reply(case.reply)
    opsgenie = connector(peer)
    result = await opsgenie.deliver(ALERT)
    await opsgenie.close()

    assert_result(result, case.expect)
    assert result.provider == "opsgenie"
    assert result.reason is None or API_KEY not in result.reason
    [request] = peer.requests
    assert request.method == "POST"
    assert request.path == "/v2/alerts"
    assert request.headers["authorization"] == f"GenieKey {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == EXPECTED_ALERT


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("critical", "P1"), ("high", "P2"), ("normal", "P3"), ("low", "P4")],
)
async def test_priority_maps_to_p1_to_p4(peer: HttpPeer, priority: str, expected: str) -> None:
    opsgenie = connector(peer)
    await opsgenie.deliver(ALERT.model_copy(update={"priority": priority}))
    await opsgenie.close()
    assert peer.requests[-1].json()["priority"] == expected


async def test_message_falls_back_to_the_text_capped_at_130(peer: HttpPeer) -> None:
    long = ALERT.model_copy(update={"subject": None, "text": "y" * 500, "data_json": "{}"})
    opsgenie = connector(peer)
    await opsgenie.deliver(long)
    await opsgenie.close()
    alert = peer.requests[-1].json()
    assert len(alert["message"]) == 130 and alert["message"].endswith("…")
    assert alert["description"] == "y" * 500
    assert "tags" not in alert


async def test_retries_reuse_the_alias(peer: HttpPeer) -> None:
    opsgenie = connector(peer)
    for attempt in (0, 1):
        await opsgenie.deliver(ALERT.model_copy(update={"attempt": attempt}))
    await opsgenie.close()
    assert [request.json()["alias"] for request in peer.requests] == ["n-1", "n-1"]


def test_defaults_and_secret() -> None:
    config = OpsgenieConfig(api_key=API_KEY)
    assert config.base_url == "https://api.opsgenie.com"
    assert EU_BASE_URL == "https://api.eu.opsgenie.com"
    assert API_KEY not in repr(config) and API_KEY not in str(config)
