"""Telegram through the real connector to a local peer speaking the Bot API's sendMessage."""

from __future__ import annotations

import gc
import logging

import pytest
from pydantic import SecretStr

from connectors import chat_common
from connectors.base import DeliveryResult, OutboundMessage
from connectors.telegram import TelegramConfig, TelegramConnector
from connectors.telegram_html import telegram_html
from tests.support.http_peer import HttpPeer, Reply
from tests.support.ports import free_port
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

TOKEN = "123456789:AAtelegram-test-token_secret"
MESSAGE = message(channel="chat", to="42")
FAILED = {"outcome": "failed"}
ADDRESS = {**FAILED, "retriable": False, "address_invalid": True, "provider_fault": False}
REFUSED = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": True}
PERMANENT = {**FAILED, "retriable": False, "address_invalid": False, "provider_fault": False}


def bot_error(code: int, description: str, **parameters: object) -> Reply:
    body: dict[str, object] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Reply(code, json=body)


CASES = [
    Case(
        "sent",
        Reply(
            200,
            json={
                "ok": True,
                "result": {"message_id": 77, "chat": {"id": 42, "type": "private"}, "date": 1},
            },
        ),
        {"outcome": "delivered", "provider_message_id": "42:77", "retriable": False},
    ),
    *STANDARD_FAULTS,
    Case(
        "chat-not-found",
        bot_error(400, "Bad Request: chat not found"),
        {**ADDRESS, "reason": "Telegram 400: Bad Request: chat not found"},
    ),
    Case("blocked-by-user", bot_error(403, "Forbidden: bot was blocked by the user"), ADDRESS),
    Case("user-deactivated", bot_error(403, "Forbidden: user is deactivated"), ADDRESS),
    Case(
        "migrated-to-supergroup",
        bot_error(
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            migrate_to_chat_id=-1001234567890,
        ),
        {
            **ADDRESS,
            "reason": "Telegram 400: Bad Request: group chat was upgraded to a supergroup chat"
            " (new chat id -1001234567890)",
        },
    ),
    Case("unauthorized", bot_error(401, "Unauthorized"), REFUSED),
    Case("malformed-token", bot_error(404, "Not Found"), REFUSED),
    Case(
        "flood-retry-after",
        bot_error(429, "Too Many Requests: retry after 12", retry_after=12),
        {**FAILED, "retriable": True, "retry_after": 12.0},
    ),
    Case(
        "cannot-parse-entities",
        bot_error(400, "Bad Request: can't parse entities: unsupported start tag"),
        PERMANENT,
    ),
    # A proxy's error page that echoes the request URL, token included.
    Case(
        "proxy-page-echoing-the-url",
        Reply(502, body=f"<h1>Bad gateway</h1> POST /bot{TOKEN}/sendMessage".encode()),
        {**FAILED, "retriable": True, "provider_fault": True},
    ),
]


def connector_for(base_url: str) -> TelegramConnector:
    config = TelegramConfig(
        base_url=base_url, token=SecretStr(TOKEN), timeout_seconds=TEST_TIMEOUT_SECONDS
    )
    return TelegramConnector(config, egress=LOCAL_PEERS)


async def deliver(base_url: str, outbound: OutboundMessage = MESSAGE) -> DeliveryResult:
    connector = connector_for(base_url)
    try:
        return await connector.deliver(outbound)
    finally:
        await connector.close()


@pytest.mark.parametrize("case", [case.param() for case in CASES])
async def test_bot_api_answers_become_results(peer: HttpPeer, case: Case) -> None:
    peer.reply(case.reply)
    result = await deliver(peer.url)
    assert_result(result, case.expect)
    assert TOKEN not in (result.reason or "")
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", f"/bot{TOKEN}/sendMessage")
    assert request.json() == {
        "chat_id": "42",
        "text": "<b>Your order shipped</b>\n\nOrder 42 is on its way.",
        "parse_mode": "HTML",
    }


async def test_the_token_in_an_echoed_error_is_redacted(peer: HttpPeer) -> None:
    # A description field, not the raw body: a body from a non-public peer (the test peer on
    # 127.0.0.1) is withheld from reasons altogether (connectors/http.py).
    description = f"upstream failed: /bot{TOKEN}/sendMessage"
    peer.reply(Reply(502, json={"ok": False, "error_code": 502, "description": description}))
    result = await deliver(peer.url)
    assert result.reason == "Telegram 502: upstream failed: /bot<redacted>/sendMessage"


async def test_the_token_never_appears_in_a_connection_failure() -> None:
    result = await deliver(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert result.outcome == "failed" and result.retriable
    assert result.reason is not None and result.reason.startswith("connection failed")
    assert TOKEN not in result.reason and TOKEN.split(":")[1] not in result.reason


async def test_the_token_never_appears_in_httpx_request_logs(
    peer: HttpPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    peer.reply(Reply(200, json={"ok": True, "result": {"message_id": 1, "chat": {"id": 42}}}))
    await deliver(peer.url)
    assert f"HTTP Request: POST {peer.url}/bot<redacted>/sendMessage" in caplog.text
    assert TOKEN not in caplog.text


async def test_only_live_connectors_secrets_are_kept_for_log_redaction() -> None:
    """Every re-configured provider used to add its secrets to a process-wide set for good
    (issue 21, LOW): the set grew, and each httpx log line was scanned against all of it."""
    tokens = [f"12345:AAold-token-{i:04d}-secret" for i in range(50)]
    for token in tokens:
        config = TelegramConfig(base_url="http://127.0.0.1:9", token=SecretStr(token))
        await TelegramConnector(config, egress=LOCAL_PEERS).close()
    gc.collect()
    live = connector_for("http://127.0.0.1:9")
    held = chat_common._log_secrets()
    assert not any(token in held for token in tokens)
    assert TOKEN in held
    await live.close()


async def test_without_html_the_text_is_sent_plain(peer: HttpPeer) -> None:
    await deliver(peer.url, MESSAGE.model_copy(update={"html": None}))
    assert peer.requests[-1].json() == {
        "chat_id": "42",
        "text": "Your order shipped\n\nOrder 42 is on its way.",
    }


async def test_html_too_long_for_telegram_falls_back_to_plain_text(peer: HttpPeer) -> None:
    long = MESSAGE.model_copy(
        update={"subject": None, "text": "short text", "html": f"<p>{'x' * 5_000}</p>"}
    )
    await deliver(peer.url, long)
    assert peer.requests[-1].json() == {"chat_id": "42", "text": "short text"}


def test_email_html_is_reduced_to_telegrams_subset() -> None:
    source = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<h1>Hi &amp; welcome</h1>\n  <p>Your <strong>order</strong> <span>is</span> "
        '<a href="https://shop.test/o/42?a=1&amp;b=2">here</a>, '
        '<a href="javascript:alert(1)">not here</a>.<br>Thanks</p>'
        "<ul><li>one</li><li>two <b>bold <i>both</b></li></ul>"
        "<p>1 &lt; 2</p></body></html>"
    )
    assert telegram_html(source) == (
        "Hi &amp; welcome\n"
        'Your <strong>order</strong> is <a href="https://shop.test/o/42?a=1&amp;b=2">here</a>,'
        " not here.\nThanks\n"
        "• one\n• two <b>bold <i>both</i></b>\n\n"
        "1 &lt; 2"
    )
