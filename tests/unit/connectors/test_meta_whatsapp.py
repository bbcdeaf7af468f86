"""The WhatsApp Cloud API connector against a local peer playing the Graph API.

Rows check the typed result and the exact request: path with version and phone number id,
Bearer token, and the JSON message object (text, media, template).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.base import DeliveryResult
from connectors.meta_whatsapp import MetaWhatsAppConfig, MetaWhatsAppConnector, parse_receipts
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

PHONE_NUMBER_ID = "106540352242922"
ACCESS_TOKEN = "EAAJB" + "x7Q" * 20
WAMID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
RECIPIENT = "+16505551234"
TEXT = "Order 42 is on its way."
BASE = {
    "messaging_product": "whatsapp",
    "recipient_type": "individual",
    "to": RECIPIENT,
    "biz_opaque_callback_data": "n-1",
}


def sent(status: str = "accepted") -> Reply:
    return Reply(
        200,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": RECIPIENT, "wa_id": RECIPIENT.removeprefix("+")}],
            "messages": [{"id": WAMID, "message_status": status}],
        },
    )


def graph_error(http: int, code: int, text: str, details: str | None = None, **extra: Any) -> Reply:
    error: dict[str, Any] = {
        "message": text,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AazXgkX1CqdJ4rVvK1mH4Zg",
        **extra,
    }
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return Reply(http, json={"error": error})


PERMANENT = {"outcome": "failed", "retriable": False, "provider_fault": False}
REJECTED = {"outcome": "failed", "retriable": False, "provider_fault": True}
RETRY = {"outcome": "failed", "retriable": True, "provider_fault": True}

SUCCESS = [
    Case("accepted", sent(), {"outcome": "sent", "provider_message_id": WAMID}),
    Case(
        "held-for-quality-assessment",
        sent("held_for_quality_assessment"),
        {"outcome": "sent", "provider_message_id": WAMID},
    ),
]

GRAPH_FAULTS = [
    Case(
        "131026-undeliverable",
        graph_error(400, 131026, "(#131026) Message Undeliverable.", "Message Undeliverable."),
        {"outcome": "failed", "retriable": False, "address_invalid": True},
    ),
    Case(
        "190-token-expired",
        graph_error(
            401,
            190,
            "Error validating access token: Session has expired.",
            error_subcode=463,
        ),
        REJECTED,
    ),
    Case(
        "131030-not-in-allowed-list",
        graph_error(400, 131030, "(#131030) Recipient phone number not in allowed list"),
        REJECTED,
    ),
    # Rate limits arrive as HTTP 400 with a rate-limit code: the code decides.
    Case("130429-throughput", graph_error(400, 130429, "(#130429) Rate limit hit"), RETRY),
    Case("4-app-rate-limit", graph_error(400, 4, "(#4) Application request limit reached"), RETRY),
    Case("80007-waba-rate-limit", graph_error(400, 80007, "(#80007) Rate limit issues"), RETRY),
    Case("131056-pair-rate-limit", graph_error(400, 131056, "(#131056) Pair rate limit"), RETRY),
    Case(
        "131047-outside-24h-window",
        graph_error(
            400,
            131047,
            "(#131047) Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer "
            "last replied to this number.",
        ),
        PERMANENT,
    ),
    Case("100-invalid-parameter", graph_error(400, 100, "(#100) Invalid parameter"), PERMANENT),
    Case("131000-something-went-wrong", graph_error(500, 131000, "Something went wrong"), RETRY),
    Case("200-without-message-id", Reply(200, json={"messaging_product": "whatsapp"}), RETRY),
]

ROWS = [case.param() for case in SUCCESS + STANDARD_FAULTS + GRAPH_FAULTS]


def config(peer: HttpPeer) -> MetaWhatsAppConfig:
    return MetaWhatsAppConfig(
        base_url=peer.url,
        timeout_seconds=TEST_TIMEOUT_SECONDS,
        phone_number_id=PHONE_NUMBER_ID,
        access_token=ACCESS_TOKEN,
    )


async def deliver(peer: HttpPeer, **fields: Any) -> DeliveryResult:
    connector = MetaWhatsAppConnector(config(peer), egress=LOCAL_PEERS)
    try:
        return await connector.deliver(message(channel="whatsapp", to=RECIPIENT, **fields))
    finally:
        await connector.close()


@pytest.mark.parametrize("case", ROWS)
async def test_answers_become_typed_results_and_the_request_is_the_cloud_apis(
    peer: HttpPeer, case: Case
) -> None:
    peer.reply(case.reply)
    result = await deliver(peer)
    assert_result(result, {"provider": "meta_whatsapp", **case.expect})
    [request] = peer.requests
    assert request.method == "POST"
    assert request.path == f"/v23.0/{PHONE_NUMBER_ID}/messages"
    assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {**BASE, "type": "text", "text": {"body": TEXT}}
    assert ACCESS_TOKEN not in repr(result)


async def test_the_reason_carries_the_graph_code_message_and_details(peer: HttpPeer) -> None:
    peer.reply(graph_error(400, 131047, "(#131047) Re-engagement message", "24 hours passed."))
    result = await deliver(peer)
    assert result.reason == (
        "Graph HTTP 400, error 131047: (#131047) Re-engagement message (24 hours passed.)"
    )


COMPONENTS = [
    {
        "type": "header",
        "parameters": [{"type": "image", "image": {"link": "https://x.test/a.png"}}],
    },
    {"type": "body", "parameters": [{"type": "text", "text": "Ada"}]},
]


@pytest.mark.parametrize(
    ("data", "to", "expected"),
    [
        pytest.param(
            {"whatsapp_template": {"name": "order_shipped", "language": {"code": "en_US"}}},
            RECIPIENT,
            {
                "type": "template",
                "template": {"name": "order_shipped", "language": {"code": "en_US"}},
            },
            id="template-no-parameters",
        ),
        pytest.param(
            {
                "whatsapp_template": {
                    "name": "order_shipped",
                    "language": "de",
                    "components": COMPONENTS,
                    "content_sid": "HX00",  # Twilio's key: ignored here
                },
                "media_urls": ["https://cdn.acme.test/ignored.png"],
            },
            RECIPIENT,
            {
                "type": "template",
                "template": {
                    "name": "order_shipped",
                    "language": {"code": "de"},
                    "components": COMPONENTS,
                },
            },
            id="template-components",
        ),
        pytest.param(
            {
                "whatsapp_template": {
                    "name": "order_shipped",
                    "language": "en",
                    "parameters": ["Ada", 42, {"type": "currency", "currency": {"code": "EUR"}}],
                }
            },
            RECIPIENT,
            {
                "type": "template",
                "template": {
                    "name": "order_shipped",
                    "language": {"code": "en"},
                    "components": [
                        {
                            "type": "body",
                            "parameters": [
                                {"type": "text", "text": "Ada"},
                                {"type": "text", "text": "42"},
                                {"type": "currency", "currency": {"code": "EUR"}},
                            ],
                        }
                    ],
                },
            },
            id="template-parameters-shorthand",
        ),
        pytest.param(
            {"media_urls": ["https://cdn.acme.test/parcel.JPG?v=2", "https://cdn.acme.test/b.pdf"]},
            RECIPIENT,
            {
                "type": "image",
                "image": {"link": "https://cdn.acme.test/parcel.JPG?v=2", "caption": TEXT},
            },
            id="image",
        ),
        pytest.param(
            {"media_urls": ["https://cdn.acme.test/invoice-42.pdf"]},
            RECIPIENT,
            {
                "type": "document",
                "document": {"link": "https://cdn.acme.test/invoice-42.pdf", "caption": TEXT},
            },
            id="document",
        ),
        pytest.param(
            {},
            f"whatsapp:{RECIPIENT}",
            {"type": "text", "text": {"body": TEXT}},
            id="whatsapp-prefix-dropped",
        ),
    ],
)
async def test_message_content(
    peer: HttpPeer, data: dict[str, Any], to: str, expected: dict[str, Any]
) -> None:
    peer.reply(sent())
    connector = MetaWhatsAppConnector(config(peer), egress=LOCAL_PEERS)
    try:
        result = await connector.deliver(
            message(channel="whatsapp", to=to, data_json=json.dumps(data))
        )
    finally:
        await connector.close()
    assert result.ok
    assert peer.requests[0].json() == {**BASE, **expected}


async def test_long_captions_and_bodies_are_trimmed(peer: HttpPeer) -> None:
    peer.reply(sent(), sent())
    media = json.dumps({"media_urls": ["https://cdn.acme.test/a.png"]})
    await deliver(peer, text="x" * 2000, data_json=media)
    await deliver(peer, text="y" * 5000)
    caption = peer.requests[0].json()["image"]["caption"]
    body = peer.requests[1].json()["text"]["body"]
    assert len(caption) == 1024 and caption.endswith("…")
    assert len(body) == MetaWhatsAppConnector.max_body_len and body.endswith("…")


@pytest.mark.parametrize(
    "template",
    [{"content_sid": "HX00"}, {"name": "order_shipped"}, "order_shipped"],
    ids=["twilio-only", "no-language", "not-an-object"],
)
async def test_unusable_template_fails_before_sending(peer: HttpPeer, template: Any) -> None:
    result = await deliver(peer, data_json=json.dumps({"whatsapp_template": template}))
    assert_result(result, PERMANENT)
    assert peer.requests == []


def test_config_defaults_and_hides_the_token() -> None:
    configured = MetaWhatsAppConfig(phone_number_id=PHONE_NUMBER_ID, access_token=ACCESS_TOKEN)
    assert configured.base_url == "https://graph.facebook.com"
    assert ACCESS_TOKEN not in repr(configured)
    assert ACCESS_TOKEN not in configured.model_dump_json()


def status(kind: str, timestamp: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": WAMID,
        "status": kind,
        "timestamp": timestamp,
        "recipient_id": "16505551234",
        "biz_opaque_callback_data": "n-1",
        **extra,
    }


# The `messages` webhook as Meta posts it (Cloud API webhooks reference), abridged.
WEBHOOK = {
    "object": "whatsapp_business_account",
    "entry": [
        {
            "id": "102290129340398",
            "changes": [
                {
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {
                            "display_phone_number": "15550783881",
                            "phone_number_id": PHONE_NUMBER_ID,
                        },
                        "statuses": [
                            status(
                                "sent",
                                "1750263773",
                                conversation={
                                    "id": "6ceb9d929c1a1bd0bf8e4c5c2ed2b8f0",
                                    "origin": {"type": "utility"},
                                },
                                pricing={
                                    "billable": True,
                                    "pricing_model": "PMP",
                                    "category": "utility",
                                },
                            ),
                            status("delivered", "1750263774"),
                            status("read", "1750263790"),
                        ],
                    },
                }
            ],
        },
        {
            "id": "102290129340398",
            "changes": [
                {
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "statuses": [
                            status(
                                "failed",
                                "1674841537",
                                errors=[
                                    {
                                        "code": 131047,
                                        "title": "Re-engagement message",
                                        "message": "Re-engagement message",
                                        "error_data": {
                                            "details": "Message failed to send because more "
                                            "than 24 hours have passed since the customer last "
                                            "replied to this number."
                                        },
                                        "href": "https://developers.facebook.com/docs/whatsapp/"
                                        "cloud-api/support/error-codes/",
                                    }
                                ],
                            )
                        ],
                    },
                }
            ],
        },
    ],
}


def test_webhook_statuses_become_receipts() -> None:
    receipts = [
        r.model_dump(exclude={"provider", "provider_message_id", "tenant_id"})
        for r in parse_receipts(WEBHOOK)
    ]
    common = {"notification_id": "n-1"}
    assert receipts == [
        {
            "provider_event_id": f"{WAMID}:delivered",
            "status": "delivered",
            "reason": None,
            "occurred_at": 1_750_263_774_000,
            **common,
        },
        {
            "provider_event_id": f"{WAMID}:read",
            "status": "read",
            "reason": None,
            "occurred_at": 1_750_263_790_000,
            **common,
        },
        {
            "provider_event_id": f"{WAMID}:failed",
            "status": "failed",
            "reason": "131047 Re-engagement message: Message failed to send because more than "
            "24 hours have passed since the customer last replied to this number.",
            "occurred_at": 1_674_841_537_000,
            **common,
        },
    ]
    assert {(r.provider, r.provider_message_id) for r in parse_receipts(WEBHOOK)} == {
        ("meta_whatsapp", WAMID)
    }


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"entry": "nope"},
        {"entry": [{"changes": [{"value": {"messages": [{"id": "wamid.in"}]}}]}]},
        {"entry": [{"changes": [{"value": {"statuses": [status("delivered", "soon")]}}]}]},
    ],
    ids=["empty", "malformed-entry", "inbound-message-only", "bad-timestamp"],
)
def test_payloads_without_usable_statuses_give_no_receipts(payload: dict[str, Any]) -> None:
    assert parse_receipts(payload) == []
