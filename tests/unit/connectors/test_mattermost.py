"""Mattermost through the real connector to a local peer speaking API v4 posts and webhooks."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from connectors.base import DeliveryResult
from connectors.mattermost import MattermostConfig, MattermostConnector
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

TOKEN = "mattermostbottoken0123456789"
HOOK_PATH = "/hooks/xxxgeneratedkeyxxx0123456789"
CHANNEL_ID = "4xp9fdt77pncbef59f4k1qe83o"
FAILED = {"outcome": "failed"}
ADDRESS = {**FAILED, "retriable": False, "address_invalid": True, "provider_fault": False}
REFUSED = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": True}
PERMANENT = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": False}
TEXT = "**Your order shipped**\n\nOrder 42 is on its way."


def app_error(code: int, error_id: str, text: str = "…") -> Reply:
    return Reply(code, json={"id": error_id, "message": text, "status_code": code})


API_CASES = [
    Case(
        "created",
        Reply(201, json={"id": "post1234", "channel_id": CHANNEL_ID, "message": TEXT}),
        {"outcome": "delivered", "provider_message_id": "post1234", "retriable": False},
    ),
    *STANDARD_FAULTS,
    Case("channel-not-found", app_error(404, "app.channel.get.existing.app_error"), ADDRESS),
    Case(
        "malformed-channel-id",
        app_error(
            400,
            "api.context.invalid_body_param.app_error",
            "Invalid or missing channel_id in request body.",
        ),
        {
            **ADDRESS,
            "reason": "Mattermost 400 api.context.invalid_body_param.app_error: "
            "Invalid or missing channel_id in request body.",
        },
    ),
    Case("no-permission", app_error(403, "api.context.permissions.app_error"), REFUSED),
    Case(
        "message-invalid",
        app_error(400, "model.post.is_valid.msg.app_error", "Invalid message"),
        PERMANENT,
    ),
    Case("no-post-id", Reply(201, json={}), {**FAILED, "retriable": True}),
]

WEBHOOK_CASES = [
    Case(
        "posted",
        Reply(200, body=b"ok"),
        {"outcome": "delivered", "provider_message_id": None, "retriable": False},
    ),
    *STANDARD_FAULTS,
    Case("channel-not-found", app_error(404, "web.incoming_webhook.channel.app_error"), ADDRESS),
    Case(
        "locked-to-another-channel",
        app_error(403, "web.incoming_webhook.channel_locked.app_error"),
        REFUSED,
    ),
    Case("webhook-deleted", app_error(400, "web.incoming_webhook.invalid.app_error"), REFUSED),
    Case("webhooks-disabled", app_error(501, "web.incoming_webhook.disabled.app_error"), REFUSED),
]


async def deliver(config: MattermostConfig, to: str) -> DeliveryResult:
    connector = MattermostConnector(config, egress=LOCAL_PEERS)
    try:
        return await connector.deliver(message(channel="chat", to=to))
    finally:
        await connector.close()


@pytest.mark.parametrize("case", [case.param() for case in API_CASES])
async def test_api_answers_become_results(peer: HttpPeer, case: Case) -> None:
    peer.reply(case.reply)
    config = MattermostConfig(
        base_url=peer.url, token=SecretStr(TOKEN), timeout_seconds=TEST_TIMEOUT_SECONDS
    )
    result = await deliver(config, CHANNEL_ID)
    assert_result(result, case.expect)
    assert TOKEN not in (result.reason or "")
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", "/api/v4/posts")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.json() == {"channel_id": CHANNEL_ID, "message": TEXT}


@pytest.mark.parametrize("case", [case.param() for case in WEBHOOK_CASES])
async def test_webhook_answers_become_results(peer: HttpPeer, case: Case) -> None:
    peer.reply(case.reply)
    config = MattermostConfig(
        webhook_url=SecretStr(f"{peer.url}{HOOK_PATH}"), timeout_seconds=TEST_TIMEOUT_SECONDS
    )
    result = await deliver(config, "town-square")
    assert_result(result, case.expect)
    assert "xxxgeneratedkeyxxx" not in (result.reason or "")
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", HOOK_PATH)
    assert "authorization" not in request.headers
    assert request.json() == {"text": TEXT, "channel": "town-square"}


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({}, "exactly one of token"),
        (
            {"token": SecretStr(TOKEN), "webhook_url": SecretStr("https://m.test/hooks/k")},
            "exactly one",
        ),
        ({"token": SecretStr(TOKEN)}, "base_url"),
    ],
    ids=["neither", "both", "token-without-server"],
)
def test_config_is_validated(settings: dict[str, SecretStr], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        MattermostConfig.model_validate(settings)
