"""Google Chat through the real connector to a local peer playing a space's incoming webhook."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.google_chat import GoogleChatConfig, GoogleChatConnector
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

KEY = "AIzaSyGoogleChatTestKey-0123456789abcd"
TOKEN = "googleChatWebhookToken0123456789abcdef%3D"
HOOK_PATH = "/v1/spaces/AAAAbcdEfgh/messages"
MESSAGE = message(channel="chat", to="team-space")
FAILED = {"outcome": "failed"}
REFUSED = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": True}


def google_error(code: int, status: str) -> Reply:
    return Reply(code, json={"error": {"code": code, "message": "…", "status": status}})


CASES = [
    Case(
        "created",
        Reply(200, json={"name": "spaces/AAAAbcdEfgh/messages/xyz.xyz", "text": "…"}),
        {
            "outcome": "delivered",
            "provider_message_id": "spaces/AAAAbcdEfgh/messages/xyz.xyz",
            "retriable": False,
        },
    ),
    *STANDARD_FAULTS,
    Case("space-or-webhook-deleted", google_error(404, "NOT_FOUND"), REFUSED),
    Case("webhook-disabled", google_error(403, "PERMISSION_DENIED"), REFUSED),
    Case(
        "quota",
        google_error(429, "RESOURCE_EXHAUSTED"),
        {**FAILED, "retriable": True, "provider_fault": True, "retry_after": None},
    ),
    Case("no-message-name", Reply(200, json={}), {**FAILED, "retriable": True}),
]


async def deliver(webhook: str, outbound: OutboundMessage = MESSAGE) -> DeliveryResult:
    config = GoogleChatConfig(webhook_url=SecretStr(webhook), timeout_seconds=TEST_TIMEOUT_SECONDS)
    connector = GoogleChatConnector(config, egress=LOCAL_PEERS)
    try:
        return await connector.deliver(outbound)
    finally:
        await connector.close()


def webhook(peer: HttpPeer) -> str:
    return f"{peer.url}{HOOK_PATH}?key={KEY}&token={TOKEN}"


@pytest.mark.parametrize("case", [case.param() for case in CASES])
async def test_webhook_answers_become_results(peer: HttpPeer, case: Case) -> None:
    peer.reply(case.reply)
    result = await deliver(webhook(peer))
    assert_result(result, case.expect)
    assert KEY not in (result.reason or "")
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", HOOK_PATH)
    # The webhook's own key and token are kept; requestId carries the idempotency key.
    assert request.query == {
        "key": [KEY],
        "token": ["googleChatWebhookToken0123456789abcdef="],
        "requestId": ["n-1"],
    }
    assert request.json() == {"text": "*Your order shipped*\nOrder 42 is on its way."}


async def test_a_thread_key_in_the_data_replies_in_that_thread(peer: HttpPeer) -> None:
    peer.reply(Reply(200, json={"name": "spaces/A/messages/B"}))
    threaded = MESSAGE.model_copy(update={"data_json": json.dumps({"thread_key": "order-42"})})
    await deliver(webhook(peer), threaded)
    request = peer.requests[-1]
    assert request.query["messageReplyOption"] == ["REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"]
    assert request.json() == {
        "text": "*Your order shipped*\nOrder 42 is on its way.",
        "thread": {"threadKey": "order-42"},
    }
