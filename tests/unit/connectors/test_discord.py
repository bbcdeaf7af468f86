"""Discord through the real connector to a local peer playing Execute Webhook (wait=true)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.discord import DiscordConfig, DiscordConnector
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

WEBHOOK_TOKEN = "discordWebhookToken-0123456789abcdefghijklmnopqrstuvwxyz_ABCDEF"
HOOK_PATH = f"/api/webhooks/123456789012345678/{WEBHOOK_TOKEN}"
MESSAGE = message(channel="chat", to="alerts")
FAILED = {"outcome": "failed"}
REFUSED = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": True}
PERMANENT = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": False}

CASES = [
    Case(
        "posted",
        Reply(200, json={"id": "1100000000000000001", "channel_id": "99", "content": "…"}),
        {"outcome": "delivered", "provider_message_id": "1100000000000000001", "retriable": False},
    ),
    # STANDARD_FAULTS' 429 has no retry_after in its JSON: the Retry-After header is used.
    *STANDARD_FAULTS,
    Case(
        "429-json-retry-after",
        Reply(
            429,
            json={"message": "You are being rate limited.", "retry_after": 1.5, "global": False},
            headers={"Retry-After": "2"},
        ),
        {**FAILED, "retriable": True, "retry_after": 1.5, "reason": "Discord 429: rate limited"},
    ),
    Case(
        "429-global",
        Reply(
            429,
            json={"message": "You are being rate limited.", "retry_after": 60.0, "global": True},
        ),
        {
            **FAILED,
            "retriable": True,
            "retry_after": 60.0,
            "reason": "Discord 429: rate limited (global)",
        },
    ),
    Case(
        "unknown-webhook", Reply(404, json={"message": "Unknown Webhook", "code": 10015}), REFUSED
    ),
    Case(
        "invalid-webhook-token",
        Reply(401, json={"message": "Invalid Webhook Token", "code": 50027}),
        REFUSED,
    ),
    Case(
        "content-too-long",
        Reply(400, json={"content": ["Must be 2000 or fewer in length."]}),
        PERMANENT,
    ),
    Case("no-message-object", Reply(200, body=b"oops"), {**FAILED, "retriable": True}),
]


async def deliver(webhook: str, outbound: OutboundMessage = MESSAGE) -> DeliveryResult:
    config = DiscordConfig(webhook_url=SecretStr(webhook), timeout_seconds=TEST_TIMEOUT_SECONDS)
    connector = DiscordConnector(config, egress=LOCAL_PEERS)
    try:
        return await connector.deliver(outbound)
    finally:
        await connector.close()


@pytest.mark.parametrize("case", [case.param() for case in CASES])
async def test_execute_webhook_answers_become_results(peer: HttpPeer, case: Case) -> None:
    peer.reply(case.reply)
    result = await deliver(f"{peer.url}{HOOK_PATH}")
    assert_result(result, case.expect)
    assert WEBHOOK_TOKEN not in (result.reason or "")
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", HOOK_PATH)
    assert request.query == {"wait": ["true"]}
    assert "authorization" not in request.headers
    assert request.json() == {
        "content": "Order 42 is on its way.",
        "allowed_mentions": {"parse": []},
        "embeds": [{"title": "Your order shipped"}],
    }


async def test_query_parameters_of_the_webhook_url_are_kept(peer: HttpPeer) -> None:
    peer.reply(Reply(200, json={"id": "1"}))
    await deliver(
        f"{peer.url}{HOOK_PATH}?thread_id=555", MESSAGE.model_copy(update={"subject": None})
    )
    request = peer.requests[-1]
    assert request.query == {"thread_id": ["555"], "wait": ["true"]}
    assert "embeds" not in request.json()


async def test_content_is_trimmed_to_discords_limit(peer: HttpPeer) -> None:
    peer.reply(Reply(200, json={"id": "1"}))
    await deliver(f"{peer.url}{HOOK_PATH}", MESSAGE.model_copy(update={"text": "y" * 2_500}))
    content = peer.requests[-1].json()["content"]
    assert len(content) == 2_000 and content.endswith("…")
