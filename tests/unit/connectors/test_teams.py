"""Teams through the real connector to a local peer playing a Workflows or legacy webhook."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.teams import TeamsConfig, TeamsConnector
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

HOOK_PATH = "/workflows/0f8fad5bd9cb469fa16570867728950e/triggers/manual/paths/invoke"
SIGNATURE = "teamsSignatureSecret0123456789abcdef"
MESSAGE = message(channel="chat", to="ops-channel")
FAILED = {"outcome": "failed"}
REFUSED = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": True}
PERMANENT = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": False}
TRANSIENT = {**FAILED, "retriable": True, "provider_fault": True}


def legacy_failure(status: int) -> Reply:
    # Legacy connector webhooks wrap Teams' own failure in an HTTP 200.
    text = (
        "Webhook message delivery failed with error: Microsoft Teams endpoint returned "
        f"HTTP error {status} with ContextId tcid=0,server=msgapi-production,cv=abc.0.."
    )
    return Reply(200, body=text.encode())


CASES = [
    # Workflows: the flow run is queued and posts later, so only `sent` is known.
    Case(
        "workflow-accepted",
        Reply(202, body=b""),
        {"outcome": "sent", "provider_message_id": None, "retriable": False},
    ),
    Case(
        "legacy-posted",
        Reply(200, body=b"1"),
        {"outcome": "delivered", "provider_message_id": None, "retriable": False},
    ),
    *STANDARD_FAULTS,
    Case("webhook-deleted", Reply(404, json={"error": {"code": "WorkflowNotFound"}}), REFUSED),
    Case("legacy-wrapped-429", legacy_failure(429), {**TRANSIENT, "retry_after": None}),
    Case("legacy-wrapped-400", legacy_failure(400), PERMANENT),
    Case("legacy-wrapped-413", legacy_failure(413), PERMANENT),
    Case(
        "legacy-endpoint-unreachable",
        Reply(
            200,
            body=b"Webhook message delivery failed with error: Error contacting Microsoft "
            b"Teams endpoint",
        ),
        TRANSIENT,
    ),
]

EXPECTED_BODY = {
    "type": "message",
    "attachments": [
        {
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {
                        "type": "TextBlock",
                        "text": "Your order shipped",
                        "style": "heading",
                        "size": "Medium",
                        "weight": "Bolder",
                        "wrap": True,
                    },
                    {"type": "TextBlock", "text": "Order 42 is on its way.", "wrap": True},
                ],
            },
        }
    ],
}


async def deliver(webhook: str, outbound: OutboundMessage = MESSAGE) -> DeliveryResult:
    config = TeamsConfig(webhook_url=SecretStr(webhook), timeout_seconds=TEST_TIMEOUT_SECONDS)
    connector = TeamsConnector(config, egress=LOCAL_PEERS)
    try:
        return await connector.deliver(outbound)
    finally:
        await connector.close()


@pytest.mark.parametrize("case", [case.param() for case in CASES])
async def test_webhook_answers_become_results(peer: HttpPeer, case: Case) -> None:
    peer.reply(case.reply)
    result = await deliver(f"{peer.url}{HOOK_PATH}?api-version=2016-06-01&sig={SIGNATURE}")
    assert_result(result, case.expect)
    assert SIGNATURE not in (result.reason or "")
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", HOOK_PATH)
    assert request.query == {"api-version": ["2016-06-01"], "sig": [SIGNATURE]}
    assert request.headers["content-type"] == "application/json"
    assert request.json() == EXPECTED_BODY
    # The webhook decides the channel; the recipient's address is not sent.
    assert b"ops-channel" not in request.body


async def test_without_a_subject_the_card_has_only_the_text(peer: HttpPeer) -> None:
    peer.reply(Reply(202))
    await deliver(f"{peer.url}{HOOK_PATH}", MESSAGE.model_copy(update={"subject": None}))
    card = peer.requests[-1].json()["attachments"][0]["content"]
    assert card["body"] == [{"type": "TextBlock", "text": "Order 42 is on its way.", "wrap": True}]
