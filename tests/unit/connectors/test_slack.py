"""Slack through the real connector to a local peer speaking chat.postMessage and webhooks."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from connectors.base import DeliveryResult, OutboundMessage
from connectors.slack import SlackConfig, SlackConnector, blocks
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

TOKEN = "xoxb-1111-2222-slacktesttoken"
HOOK_PATH = "/services/T0000000/B0000000/slackwebhooksecret0000000"
MESSAGE = message(channel="chat", to="C0123456789")
EXPECTED_BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "Your order shipped"}},
    {"type": "section", "text": {"type": "mrkdwn", "text": "Order 42 is on its way."}},
]
FAILED = {"outcome": "failed"}
ADDRESS = {**FAILED, "retriable": False, "address_invalid": True, "provider_fault": False}
REFUSED = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": True}
PERMANENT = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": False}
TRANSIENT = {**FAILED, "retriable": True, "provider_fault": True}


def ok_false(error: str) -> Reply:
    # Slack's Web API answers errors with HTTP 200 and ok: false.
    return Reply(200, json={"ok": False, "error": error})


API_CASES = [
    Case(
        "posted",
        Reply(200, json={"ok": True, "channel": "C0123456789", "ts": "1503435956.000247"}),
        {
            "outcome": "delivered",
            "provider_message_id": "C0123456789:1503435956.000247",
            "retriable": False,
        },
    ),
    *STANDARD_FAULTS,
    Case("channel_not_found", ok_false("channel_not_found"), ADDRESS),
    Case("is_archived", ok_false("is_archived"), ADDRESS),
    Case("not_in_channel", ok_false("not_in_channel"), ADDRESS),
    Case("invalid_auth", ok_false("invalid_auth"), REFUSED),
    Case("not_authed", ok_false("not_authed"), REFUSED),
    Case("token_revoked", ok_false("token_revoked"), REFUSED),
    Case("account_inactive", ok_false("account_inactive"), REFUSED),
    Case(
        "ratelimited-429",
        Reply(429, json={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "30"}),
        {**TRANSIENT, "retry_after": 30.0},
    ),
    Case("internal_error", ok_false("internal_error"), {**TRANSIENT, "retry_after": None}),
    Case("fatal_error", ok_false("fatal_error"), TRANSIENT),
    Case("service_unavailable", ok_false("service_unavailable"), TRANSIENT),
    Case("request_timeout", ok_false("request_timeout"), TRANSIENT),
    Case(
        "msg_too_long",
        ok_false("msg_too_long"),
        {**PERMANENT, "reason": "Slack error: msg_too_long"},
    ),
    Case("invalid_blocks", ok_false("invalid_blocks"), PERMANENT),
    Case("not-slack-json", Reply(200, body=b"<html>proxy</html>"), TRANSIENT),
]

WEBHOOK_CASES = [
    Case(
        "posted",
        Reply(200, body=b"ok"),
        {"outcome": "delivered", "provider_message_id": None, "retriable": False},
    ),
    *STANDARD_FAULTS,
    # The channel the webhook is bound to, or the webhook itself, is gone: a configuration
    # problem (`to` is not used), so a refusal by this provider, not an invalid address.
    Case("channel_not_found", Reply(404, body=b"channel_not_found"), REFUSED),
    Case("channel_is_archived", Reply(410, body=b"channel_is_archived"), REFUSED),
    Case("no_service", Reply(404, body=b"no_service"), REFUSED),
    Case("invalid_token", Reply(403, body=b"invalid_token"), REFUSED),
    Case("action_prohibited", Reply(403, body=b"action_prohibited"), REFUSED),
    Case("invalid_payload", Reply(400, body=b"invalid_payload"), PERMANENT),
    Case("rollup_error", Reply(500, body=b"rollup_error"), TRANSIENT),
]


async def deliver(config: SlackConfig, outbound: OutboundMessage = MESSAGE) -> DeliveryResult:
    connector = SlackConnector(config, egress=LOCAL_PEERS)
    try:
        return await connector.deliver(outbound)
    finally:
        await connector.close()


@pytest.mark.parametrize("case", [case.param() for case in API_CASES])
async def test_web_api_answers_become_results(peer: HttpPeer, case: Case) -> None:
    peer.reply(case.reply)
    config = SlackConfig(
        base_url=peer.url, token=SecretStr(TOKEN), timeout_seconds=TEST_TIMEOUT_SECONDS
    )
    result = await deliver(config)
    assert_result(result, case.expect)
    assert TOKEN not in (result.reason or "")
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", "/api/chat.postMessage")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.json() == {
        "channel": "C0123456789",
        "text": "Order 42 is on its way.",
        "blocks": EXPECTED_BLOCKS,
    }


@pytest.mark.parametrize("case", [case.param() for case in WEBHOOK_CASES])
async def test_webhook_answers_become_results(peer: HttpPeer, case: Case) -> None:
    peer.reply(case.reply)
    webhook = f"{peer.url}{HOOK_PATH}"
    config = SlackConfig(webhook_url=SecretStr(webhook), timeout_seconds=TEST_TIMEOUT_SECONDS)
    result = await deliver(config)
    assert_result(result, case.expect)
    assert "slackwebhooksecret" not in (result.reason or "")
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", HOOK_PATH)
    assert "authorization" not in request.headers
    # A webhook is bound to its channel: no channel in the body.
    assert request.json() == {"text": "Order 42 is on its way.", "blocks": EXPECTED_BLOCKS}


async def test_without_a_subject_only_text_is_sent(peer: HttpPeer) -> None:
    peer.reply(Reply(200, json={"ok": True, "channel": "C0123456789", "ts": "1.2"}))
    config = SlackConfig(base_url=peer.url, token=SecretStr(TOKEN))
    await deliver(config, MESSAGE.model_copy(update={"subject": None}))
    assert peer.requests[-1].json() == {"channel": "C0123456789", "text": MESSAGE.text}


def test_long_text_is_split_into_sections_of_slacks_maximum() -> None:
    built = blocks("s" * 200, "x" * 7_000)
    assert built[0]["text"]["text"] == "s" * 149 + "…"  # header text: at most 150
    assert [len(block["text"]["text"]) for block in built[1:]] == [3_000, 3_000, 1_000]


@pytest.mark.parametrize(
    "secrets",
    [{}, {"token": SecretStr(TOKEN), "webhook_url": SecretStr("https://hooks.slack.com/x")}],
    ids=["neither", "both"],
)
def test_config_needs_exactly_one_mode(secrets: dict[str, SecretStr]) -> None:
    with pytest.raises(ValidationError, match="exactly one of token"):
        SlackConfig.model_validate(secrets)


def test_config_repr_hides_the_token() -> None:
    assert TOKEN not in repr(SlackConfig(token=SecretStr(TOKEN)))
