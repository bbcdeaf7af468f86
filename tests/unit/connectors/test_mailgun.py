"""Mailgun against an HttpPeer speaking the Messages API, webhook receipts and signatures."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from connectors.mailgun import MailgunConfig, MailgunConnector, parse_receipts, verify_signature
from connectors.receipts import Receipt
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

API_KEY = "key-test-not-real"
DOMAIN = "mg.acme.test"

SUCCESS = [
    Case(
        "200-queued",
        Reply(
            200,
            json={"id": f"<20240131120000.1.5817ABC@{DOMAIN}>", "message": "Queued. Thank you."},
        ),
        {
            "outcome": "sent",
            "provider": "mailgun",
            # Without the angle brackets, as webhook events carry it.
            "provider_message_id": f"20240131120000.1.5817ABC@{DOMAIN}",
            "retriable": False,
        },
    ),
    # Mailgun accepted it: an unexpected body must not make the pipeline send it again.
    Case(
        "200-without-id",
        Reply(200, body=b"Queued"),
        {"outcome": "sent", "provider_message_id": None, "retriable": False},
    ),
]

PROVIDER_ERRORS = [
    Case(
        "400-invalid-recipient",
        Reply(
            400, json={"message": "to parameter is not a valid address. please check documentation"}
        ),
        {
            "outcome": "failed",
            "retriable": False,
            "address_invalid": True,
            "provider_fault": False,
            "reason": "HTTP 400: to parameter is not a valid address. please check documentation",
        },
    ),
    Case(
        "400-invalid-sender",
        Reply(
            400,
            json={"message": "from parameter is not a valid address. please check documentation"},
        ),
        {"outcome": "failed", "retriable": False, "address_invalid": False, "provider_fault": True},
    ),
    Case(
        "400-missing-text",
        Reply(400, json={"message": "Need at least one of 'text' or 'html' parameters specified"}),
        {
            "outcome": "failed",
            "retriable": False,
            "address_invalid": False,
            "provider_fault": False,
            "reason": "HTTP 400: Need at least one of 'text' or 'html' parameters specified",
        },
    ),
    Case(
        "401-plain-forbidden",
        Reply(401, body=b"Forbidden"),
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": True,
            # A raw body from a non-public peer (this one is on 127.0.0.1) is never quoted.
            "reason": "HTTP 401: (body withheld: non-public peer)",
        },
    ),
    Case(
        "404-unknown-domain",
        Reply(404, json={"message": f"Domain not found: {DOMAIN}"}),
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": True,
            "reason": f"HTTP 404: Domain not found: {DOMAIN}",
        },
    ),
]


def connector(peer: HttpPeer) -> MailgunConnector:
    config = MailgunConfig(
        api_key=API_KEY,
        domain=DOMAIN,
        sender=f"Acme <notify@{DOMAIN}>",
        base_url=peer.url,
        timeout_seconds=TEST_TIMEOUT_SECONDS,
    )
    return MailgunConnector(config, egress=LOCAL_PEERS)


@pytest.mark.parametrize("case", [c.param() for c in SUCCESS + STANDARD_FAULTS + PROVIDER_ERRORS])
async def test_send_maps_the_answer_and_sends_the_messages_request(
    peer: HttpPeer, case: Case
) -> None:
    peer.reply(case.reply)
    mailgun = connector(peer)
    try:
        result = await mailgun.deliver(message())
    finally:
        await mailgun.close()

    assert_result(result, case.expect)
    assert API_KEY not in repr(result)
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", f"/v3/{DOMAIN}/messages")
    basic = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {basic}"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {
        "from": [f"Acme <notify@{DOMAIN}>"],
        "to": ["ada@example.test"],
        "subject": ["Your order shipped"],
        "text": ["Order 42 is on its way."],
        "html": ["<p>Order 42 is on its way.</p>"],
        "v:notification_id": ["n-1"],
        "v:tenant_id": ["acme"],
    }


async def test_text_only_message_sends_no_html_field(peer: HttpPeer) -> None:
    peer.reply(Reply(200, json={"id": "<x@mg>", "message": "Queued. Thank you."}))
    mailgun = connector(peer)
    try:
        await mailgun.deliver(message(html=None))
    finally:
        await mailgun.close()
    assert "html" not in peer.requests[-1].form()


def test_config_defaults_to_the_us_region_and_hides_secrets() -> None:
    config = MailgunConfig(
        api_key=API_KEY, domain=DOMAIN, sender=f"n@{DOMAIN}", webhook_signing_key="signing-secret"
    )
    assert config.base_url == "https://api.mailgun.net"
    assert API_KEY not in repr(config) and "signing-secret" not in repr(config)
    with pytest.raises(ValueError):
        MailgunConfig(api_key=API_KEY, domain="acme.test/../v4", sender=f"n@{DOMAIN}")


# HMAC-SHA256 of timestamp + token under SIGNING_KEY, computed with `openssl dgst -sha256
# -hmac`, not with the code under test.
SIGNING_KEY = "key-test-signing-not-real"
TIMESTAMP = "1529006854"
TOKEN = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
SIGNATURE = "2c58575d6a7636fa0adab67fbc5dd8958a741a83278f920f0ad3d3c8c85347b3"


@pytest.mark.parametrize(
    ("key", "timestamp", "token", "signature", "valid"),
    [
        (SIGNING_KEY, TIMESTAMP, TOKEN, SIGNATURE, True),
        ("another-key", TIMESTAMP, TOKEN, SIGNATURE, False),
        (SIGNING_KEY, "1529006855", TOKEN, SIGNATURE, False),
        (SIGNING_KEY, TIMESTAMP, TOKEN[:-1] + "1", SIGNATURE, False),
        (SIGNING_KEY, TIMESTAMP, TOKEN, SIGNATURE[:-1] + "4", False),
        (SIGNING_KEY, TIMESTAMP, TOKEN, "", False),
        (SIGNING_KEY, TIMESTAMP, TOKEN, "é" * 64, False),
    ],
    ids=["valid", "wrong-key", "timestamp", "token", "signature", "empty", "non-ascii"],
)
def test_verify_signature(
    key: str, timestamp: str, token: str, signature: str, valid: bool
) -> None:
    assert verify_signature(key, timestamp, token, signature) is valid


# Shaped like Mailgun's webhook payload examples.
MESSAGE_ID = f"20240131120000.1.5817ABC@{DOMAIN}"
DELIVERED: dict[str, Any] = {
    "signature": {"timestamp": TIMESTAMP, "token": TOKEN, "signature": SIGNATURE},
    "event-data": {
        "event": "delivered",
        "id": "CPgfbmQMTCKtHW6uIWtuVe",
        "timestamp": 1521472262.908181,
        "log-level": "info",
        "envelope": {
            "transport": "smtp",
            "sender": f"notify@{DOMAIN}",
            "sending-ip": "209.61.154.250",
            "targets": "ada@example.test",
        },
        "flags": {"is-routed": False, "is-authenticated": True, "is-test-mode": False},
        "recipient": "ada@example.test",
        "recipient-domain": "example.test",
        "message": {
            "headers": {
                "to": "ada@example.test",
                "message-id": MESSAGE_ID,
                "from": f"Acme <notify@{DOMAIN}>",
                "subject": "Your order shipped",
            },
            "attachments": [],
            "size": 111,
        },
        "delivery-status": {
            "tls": True,
            "mx-host": "smtp-in.example.test",
            "code": 250,
            "description": "",
            "session-seconds": 0.43,
            "message": "OK",
            "attempt-no": 1,
        },
        "user-variables": {"notification_id": "n-1", "tenant_id": "acme"},
        "tags": [],
        "campaigns": [],
    },
}


def failed(severity: str, reason: str, code: int, description: str) -> dict[str, Any]:
    payload = copy.deepcopy(DELIVERED)
    payload["event-data"].update(
        {
            "event": "failed",
            "id": f"ev-{severity}-{reason}",
            "log-level": "error" if severity == "permanent" else "warn",
            "severity": severity,
            "reason": reason,
            "delivery-status": {
                "attempt-no": 1,
                "message": "",
                "code": code,
                "description": description,
                "session-seconds": 0.0,
            },
        }
    )
    return payload


def receipt(event_id: str, status: str, reason: str | None = None) -> Receipt:
    return Receipt(
        provider="mailgun",
        provider_event_id=event_id,
        status=status,  # type: ignore[arg-type]
        provider_message_id=MESSAGE_ID,
        notification_id="n-1",
        tenant_id="acme",
        reason=reason,
        occurred_at=1521472262908,
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (DELIVERED, [receipt("CPgfbmQMTCKtHW6uIWtuVe", "delivered")]),
        (
            failed("permanent", "bounce", 550, "5.1.1 The email account does not exist"),
            [
                receipt(
                    "ev-permanent-bounce",
                    "bounced",
                    "bounce: 550 5.1.1 The email account does not exist",
                )
            ],
        ),
        (
            failed(
                "permanent", "suppress-bounce", 605, "Not delivering to previously bounced address"
            ),
            [
                receipt(
                    "ev-permanent-suppress-bounce",
                    "bounced",
                    "suppress-bounce: 605 Not delivering to previously bounced address",
                )
            ],
        ),
        (
            failed(
                "permanent", "suppress-unsubscribe", 606, "Not delivering to unsubscribed address"
            ),
            [
                receipt(
                    "ev-permanent-suppress-unsubscribe",
                    "failed",
                    "suppress-unsubscribe: 606 Not delivering to unsubscribed address",
                )
            ],
        ),
        (failed("temporary", "generic", 452, "4.2.2 mailbox full"), []),
        ({**DELIVERED, "event-data": {**DELIVERED["event-data"], "event": "opened"}}, []),
    ],
    ids=[
        "delivered",
        "hard-bounce",
        "suppressed-bounce",
        "suppressed-unsubscribe",
        "temporary",
        "opened",
    ],
)
def test_parse_receipts(payload: dict[str, Any], expected: list[Receipt]) -> None:
    assert parse_receipts(payload) == expected


def test_empty_user_variables_and_malformed_events() -> None:
    payload = copy.deepcopy(DELIVERED)
    payload["event-data"]["user-variables"] = []  # how Mailgun sends "none"
    [receipt_] = parse_receipts(payload)
    assert receipt_.notification_id is None and receipt_.provider_message_id == MESSAGE_ID
    assert parse_receipts({"event-data": {"event": "delivered"}}) == []
