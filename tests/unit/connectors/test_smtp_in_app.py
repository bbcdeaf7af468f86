"""The SMTP and in-app connectors against real peers: an aiosmtpd server, a publish callback."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes, policy
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from connectors.base import DeliveryResult, OutboundMessage
from connectors.errors import UnknownProviderError
from connectors.in_app import InAppConfig, InAppConnector
from connectors.registry import provider_class
from connectors.smtp import SmtpConfig, SmtpConnector
from tests.support.ports import free_port
from tests.support.provider_cases import LOCAL_PEERS

MESSAGE = OutboundMessage(
    notification_id="n-1",
    tenant_id="acme",
    channel="email",
    to="ada@example.test",
    subject="Hello",
    text="Plain body",
    html="<p>HTML body</p>",
    idempotency_key="n-1",
)


class ScriptedSmtp:
    """Answers DATA with a scripted reply, keeping what it accepted."""

    def __init__(self) -> None:
        self.reply = "250 OK"
        self.received: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply.startswith("250"):
            self.received.append(message_from_bytes(envelope.content, policy=policy.default))
        return self.reply


@pytest.fixture(scope="module")
def smtp_peer() -> Iterator[tuple[ScriptedSmtp, int]]:
    handler, port = ScriptedSmtp(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "250 OK",
            DeliveryResult(
                outcome="sent", provider="smtp", provider_message_id="<n-1@example.com>"
            ),
        ),
        (
            "451 4.3.0 try again later",
            DeliveryResult(
                outcome="failed",
                provider="smtp",
                retriable=True,
                reason="SMTP 451: 4.3.0 try again later",
                provider_fault=True,
            ),
        ),
        (
            "554 5.7.1 rejected as spam",
            DeliveryResult(
                outcome="failed",
                provider="smtp",
                retriable=False,
                reason="SMTP 554: 5.7.1 rejected as spam",
            ),
        ),
    ],
    ids=["accepted", "transient-4xx", "permanent-5xx"],
)
async def test_smtp_replies_become_typed_results(
    smtp_peer: tuple[ScriptedSmtp, int], reply: str, expected: DeliveryResult
) -> None:
    handler, port = smtp_peer
    handler.reply = reply
    connector = SmtpConnector(
        SmtpConfig(host="127.0.0.1", port=port, timeout_seconds=5), egress=LOCAL_PEERS
    )
    assert await connector.deliver(MESSAGE) == expected


async def test_smtp_message_has_both_parts_and_a_stable_message_id(
    smtp_peer: tuple[ScriptedSmtp, int],
) -> None:
    handler, port = smtp_peer
    handler.reply, handler.received = "250 OK", []
    connector = SmtpConnector(
        SmtpConfig(host="127.0.0.1", port=port, sender="n@acme.test"), egress=LOCAL_PEERS
    )
    await connector.deliver(MESSAGE)
    await connector.deliver(MESSAGE)
    first, second = handler.received
    assert first["Message-ID"] == second["Message-ID"] == "<n-1@acme.test>"
    assert first["Subject"] == "Hello" and first["To"] == "ada@example.test"
    assert first.get_body(("plain",)).get_content().strip() == "Plain body"
    assert first.get_body(("html",)).get_content().strip() == "<p>HTML body</p>"


async def test_smtp_server_down_is_retriable() -> None:
    connector = SmtpConnector(
        SmtpConfig(host="127.0.0.1", port=free_port(), timeout_seconds=2), egress=LOCAL_PEERS
    )
    result = await connector.deliver(MESSAGE)
    assert result.outcome == "failed" and result.retriable
    assert result.reason is not None and result.reason.startswith("SMTP connection failed")


async def test_in_app_publishes_to_the_inbox_and_trims_long_bodies() -> None:
    published: list[tuple[str, dict[str, Any]]] = []

    async def publish(key: str, record: dict[str, Any]) -> None:
        published.append((key, record))

    connector = InAppConnector(InAppConfig(), publish)
    long = MESSAGE.model_copy(update={"channel": "in_app", "to": "ada", "text": "x" * 20_000})
    result = await connector.deliver(long)
    assert result == DeliveryResult(
        outcome="delivered", provider="in_app", provider_message_id="n-1"
    )
    [(key, record)] = published
    assert key == "acme:ada" and record["user_id"] == "ada"
    assert len(record["body"]) == InAppConnector.max_body_len and record["body"].endswith("…")


def test_unknown_provider_lists_the_valid_names() -> None:
    with pytest.raises(UnknownProviderError, match=r"valid: .*\bin_app\b.*\bsmtp\b") as info:
        provider_class("carrier-pigeon")
    valid = str(info.value).partition("valid: ")[2].rstrip("'\"").split(", ")
    assert valid == sorted(valid) and "webhook" in valid
