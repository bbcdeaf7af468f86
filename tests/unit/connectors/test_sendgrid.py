"""SendGrid against an HttpPeer speaking Mail Send's wire format, and Event Webhook receipts."""

from __future__ import annotations

import time

import pytest

from connectors.receipts import Receipt
from connectors.sendgrid import SendGridConfig, SendGridConnector, parse_receipts
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

API_KEY = "SG.test-key-not-real"
HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"

SUCCESS = [
    Case(
        "202-accepted",
        Reply(202, headers={"X-Message-Id": "W86EgYT6SQKk0lRflfLRsA"}),
        {
            "outcome": "sent",
            "provider": "sendgrid",
            "provider_message_id": "W86EgYT6SQKk0lRflfLRsA",
            "retriable": False,
        },
    ),
]

PROVIDER_ERRORS = [
    Case(
        "400-invalid-recipient",
        Reply(
            400,
            json={
                "errors": [
                    {
                        "message": "Does not contain a valid address.",
                        "field": "personalizations.0.to.0.email",
                        "help": f"{HELP}#message.personalizations.to",
                    }
                ]
            },
        ),
        {
            "outcome": "failed",
            "retriable": False,
            "address_invalid": True,
            "provider_fault": False,
            "reason": "HTTP 400: Does not contain a valid address. (personalizations.0.to.0.email)",
        },
    ),
    Case(
        "400-invalid-sender",
        Reply(
            400,
            json={
                "errors": [
                    {
                        "message": "The from email does not contain a valid address.",
                        "field": "from.email",
                        "help": f"{HELP}#message.from",
                    }
                ]
            },
        ),
        {"outcome": "failed", "retriable": False, "address_invalid": False, "provider_fault": True},
    ),
    Case(
        "400-content-two-errors",
        Reply(
            400,
            json={
                "errors": [
                    {"message": "The subject is required.", "field": "subject", "help": None},
                    {"message": "Bad content.", "field": None, "help": None},
                ]
            },
        ),
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": False,
            "address_invalid": False,
            "reason": "HTTP 400: The subject is required. (subject); Bad content.",
        },
    ),
    Case(
        "403-unverified-sender-identity",
        Reply(
            403,
            json={
                "errors": [
                    {
                        "message": "The from address does not match a verified Sender Identity.",
                        "field": "from",
                        "help": None,
                    }
                ]
            },
        ),
        {"outcome": "failed", "retriable": False, "provider_fault": True},
    ),
    Case(
        "413-payload-too-large",
        Reply(413, json={"errors": [{"message": "Payload too large", "field": None}]}),
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": False,
            "reason": "HTTP 413: Payload too large",
        },
    ),
    Case(
        "500-server-error",
        Reply(500, body=b"internal error"),
        # A raw body from a non-public peer (this one is on 127.0.0.1) is never quoted.
        {
            "outcome": "failed",
            "retriable": True,
            "reason": "HTTP 500: (body withheld: non-public peer)",
        },
    ),
]


def connector(peer: HttpPeer) -> SendGridConnector:
    config = SendGridConfig(
        api_key=API_KEY,
        sender="Acme <notify@acme.test>",
        base_url=peer.url,
        timeout_seconds=TEST_TIMEOUT_SECONDS,
    )
    return SendGridConnector(config, egress=LOCAL_PEERS)


@pytest.mark.parametrize("case", [c.param() for c in SUCCESS + STANDARD_FAULTS + PROVIDER_ERRORS])
async def test_send_maps_the_answer_and_sends_the_mail_send_request(
    peer: HttpPeer, case: Case
) -> None:
    peer.reply(case.reply)
    sendgrid = connector(peer)
    try:
        result = await sendgrid.deliver(message())
    finally:
        await sendgrid.close()

    assert_result(result, case.expect)
    assert API_KEY not in repr(result)
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "personalizations": [{"to": [{"email": "ada@example.test"}]}],
        "from": {"email": "notify@acme.test", "name": "Acme"},
        "subject": "Your order shipped",
        "content": [
            {"type": "text/plain", "value": "Order 42 is on its way."},
            {"type": "text/html", "value": "<p>Order 42 is on its way.</p>"},
        ],
        "custom_args": {"notification_id": "n-1", "tenant_id": "acme"},
    }


async def test_text_only_message_sends_one_part_and_a_bare_sender(peer: HttpPeer) -> None:
    peer.reply(Reply(202, headers={"X-Message-Id": "abc"}))
    config = SendGridConfig(api_key=API_KEY, sender="notify@acme.test", base_url=peer.url)
    sendgrid = SendGridConnector(config, egress=LOCAL_PEERS)
    try:
        await sendgrid.deliver(message(html=None))
    finally:
        await sendgrid.close()
    body = peer.requests[-1].json()
    assert body["from"] == {"email": "notify@acme.test"}
    assert body["content"] == [{"type": "text/plain", "value": "Order 42 is on its way."}]


async def test_429_without_retry_after_waits_until_the_rate_limit_resets(peer: HttpPeer) -> None:
    reset = int(time.time()) + 30
    peer.reply(
        Reply(
            429,
            json={"errors": [{"message": "too many requests"}]},
            headers={"X-RateLimit-Reset": str(reset)},
        )
    )
    sendgrid = connector(peer)
    try:
        result = await sendgrid.deliver(message())
    finally:
        await sendgrid.close()
    assert result.retriable and result.provider_fault
    assert result.retry_after == pytest.approx(30, abs=2)


def test_the_api_key_is_not_in_the_config_repr() -> None:
    config = SendGridConfig(api_key=API_KEY, sender="notify@acme.test")
    assert config.base_url == "https://api.sendgrid.com"
    assert API_KEY not in repr(config) and API_KEY not in str(config.model_dump())


# Shaped like the Event Webhook reference's examples, with our custom_args at the top level
# as SendGrid posts them.
MESSAGE_ID = "W86EgYT6SQKk0lRflfLRsA"
SG_MESSAGE_ID = f"{MESSAGE_ID}.filterdrecv-p3las1-5bf99c48d-7jc5d-20-5A8B1B9F-2.0"


def event(kind: str, event_id: str, **fields: object) -> dict[str, object]:
    return {
        "email": "ada@example.test",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": kind,
        "category": "cat facts",
        "sg_event_id": event_id,
        "sg_message_id": SG_MESSAGE_ID,
        "notification_id": "n-1",
        "tenant_id": "acme",
        **fields,
    }


def receipt(event_id: str, status: str, reason: str | None = None) -> Receipt:
    return Receipt(
        provider="sendgrid",
        provider_event_id=event_id,
        status=status,  # type: ignore[arg-type]
        provider_message_id=MESSAGE_ID,
        notification_id="n-1",
        tenant_id="acme",
        reason=reason,
        occurred_at=1513299569000,
    )


def test_parse_receipts_maps_delivery_events_and_skips_the_rest() -> None:
    events = [
        event("processed", "ev-processed"),
        event("deferred", "ev-deferred", response="400 try again later", attempt="5"),
        event("delivered", "ev-delivered", response="250 OK"),
        event("open", "ev-open", useragent="Mozilla/4.0", ip="255.255.255.255"),
        event("bounce", "ev-bounce", reason="500 unknown recipient", status="5.0.0", type="bounce"),
        event(
            "bounce",
            "ev-blocked",
            reason="550 5.7.1 blocked for reputation",
            status="5.7.1",
            type="blocked",
        ),
        event("dropped", "ev-dropped-bounced", reason="Bounced Address", status="5.0.0"),
        event("dropped", "ev-dropped-unsub", reason="Unsubscribed Address", status="5.0.0"),
        event("click", "ev-click", url="http://acme.test"),
    ]
    assert parse_receipts(events) == [
        receipt("ev-delivered", "delivered"),
        receipt("ev-bounce", "bounced", "500 unknown recipient"),
        receipt("ev-blocked", "failed", "550 5.7.1 blocked for reputation"),
        receipt("ev-dropped-bounced", "bounced", "Bounced Address"),
        receipt("ev-dropped-unsub", "failed", "Unsubscribed Address"),
    ]


def test_events_without_our_args_or_an_event_id_still_become_receipts() -> None:
    # A message sent outside this pipeline, and an old-style event without sg_event_id.
    bare = {
        "email": "x@example.test",
        "timestamp": 1386636115,
        "event": "dropped",
        "reason": "Invalid",
        "smtp-id": "<4FB29F5D.5080404@sendgrid.com>",
    }
    [first] = parse_receipts([bare])
    [again] = parse_receipts([dict(bare)])
    assert first.status == "bounced" and first.notification_id is None
    assert first.provider_message_id is None
    assert first.provider_event_id == again.provider_event_id
    assert first.provider_event_id.startswith("sha256:")


def test_a_malformed_event_is_skipped_not_fatal() -> None:
    good = event("delivered", "ev-ok")
    assert [r.provider_event_id for r in parse_receipts([{"event": "delivered"}, good])] == [
        "ev-ok"
    ]
