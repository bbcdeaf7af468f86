"""The Vonage SMS API connector against a local peer playing `POST /sms/json`.

Vonage answers most errors with HTTP 200 and a per-part `status`, so besides the standard HTTP
faults the table has a row per status class. Each row checks the typed result and the exact
form Vonage expects.
"""

from __future__ import annotations

from typing import Any

import pytest

from connectors.base import DeliveryResult
from connectors.vonage import VonageConfig, VonageConnector, parse_receipts
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

API_KEY = "abcd1234"
API_SECRET = "abcdef0123456789"
MESSAGE_ID = "0A0000000123ABCD1"
RECIPIENT = "+447700900000"
CALLBACK = "https://hooks.acme.test/vonage/dlr"


def part(status: str = "0", **fields: str) -> dict[str, str]:
    if status == "0":
        return {
            "to": RECIPIENT.removeprefix("+"),
            "message-id": MESSAGE_ID,
            "status": "0",
            "remaining-balance": "3.14159265",
            "message-price": "0.03330000",
            "network": "23410",
            **fields,
        }
    return {"status": status, **fields}


def answer(*parts: dict[str, str]) -> Reply:
    return Reply(200, json={"message-count": str(len(parts)), "messages": list(parts)})


def status(code: str, text: str, expect: dict[str, Any]) -> Case:
    return Case(f"status-{code}", answer(part(code, **{"error-text": text})), expect)


PERMANENT = {"outcome": "failed", "retriable": False, "provider_fault": False}
REJECTED = {"outcome": "failed", "retriable": False, "provider_fault": True}
RETRY = {"outcome": "failed", "retriable": True, "provider_fault": True}
INVALID = {"outcome": "failed", "retriable": False, "address_invalid": True}

SUCCESS = [
    Case("accepted", answer(part()), {"outcome": "sent", "provider_message_id": MESSAGE_ID}),
    Case(
        "concatenated-two-parts",
        answer(part(), part(**{"message-id": "0A0000000123ABCD2"})),
        {"outcome": "sent", "provider_message_id": MESSAGE_ID},
    ),
]

VONAGE_FAULTS = [
    status("1", "Throughput Rate Exceeded - please wait [ 1000 ] and retry", RETRY),
    status("2", "Missing to param", PERMANENT),
    status("3", "Invalid to param", PERMANENT),
    status("4", "Bad Credentials", REJECTED),
    status("5", "Internal Error", RETRY),
    status("6", "Unroutable message - rejected", INVALID),
    status("7", "Number barred", INVALID),
    status("8", "Partner account barred", REJECTED),
    status("9", "Partner quota exceeded", REJECTED),
    status("12", "Message too long", PERMANENT),
    status("15", "Illegal Sender Address - rejected", REJECTED),
    status("29", "Non White-listed Destination - rejected", REJECTED),
    status("33", "Number de-activated", INVALID),
    Case(
        "second-part-failed",
        answer(part(), part("5", **{"error-text": "Internal Error"})),
        RETRY,
    ),
    Case("200-without-messages", Reply(200, json={}), RETRY),
    Case("200-not-json", Reply(200, body=b"<html>gateway</html>"), RETRY),
]

ROWS = [case.param() for case in SUCCESS + STANDARD_FAULTS + VONAGE_FAULTS]


def config(peer: HttpPeer, **overrides: Any) -> VonageConfig:
    values: dict[str, Any] = {
        "base_url": peer.url,
        "timeout_seconds": TEST_TIMEOUT_SECONDS,
        "api_key": API_KEY,
        "api_secret": API_SECRET,
        "sender": "AcmeInc",
        "callback": CALLBACK,
    }
    values.update(overrides)
    return VonageConfig(**values)


async def deliver(peer: HttpPeer, **fields: Any) -> DeliveryResult:
    connector = VonageConnector(config(peer), egress=LOCAL_PEERS)
    try:
        return await connector.deliver(message(channel="sms", to=RECIPIENT, **fields))
    finally:
        await connector.close()


@pytest.mark.parametrize("case", ROWS)
async def test_answers_become_typed_results_and_the_request_is_vonages(
    peer: HttpPeer, case: Case
) -> None:
    peer.reply(case.reply)
    result = await deliver(peer)
    assert_result(result, {"provider": "vonage", **case.expect})
    [request] = peer.requests
    assert request.method == "POST"
    assert request.path == "/sms/json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {
        "api_key": [API_KEY],
        "api_secret": [API_SECRET],
        "from": ["AcmeInc"],
        "to": ["447700900000"],
        "text": ["Order 42 is on its way."],
        "client-ref": ["n-1"],
        "callback": [CALLBACK],
    }
    assert API_SECRET not in repr(result)


async def test_the_reason_carries_vonages_status_and_text(peer: HttpPeer) -> None:
    peer.reply(answer(part("7", **{"error-text": "Number barred"})))
    result = await deliver(peer)
    assert result.reason == "Vonage status 7: Number barred"


@pytest.mark.parametrize(
    ("text", "expected_type"),
    [
        ("Votre commande est expédiée: 42,50 € [réf. ~A]", None),
        ("Заказ 42 отправлен", "unicode"),
        ("Order 42 shipped ✅", "unicode"),
    ],
    ids=["gsm-7-with-extension-chars", "cyrillic", "emoji"],
)
async def test_text_outside_gsm_7_is_sent_as_unicode(
    peer: HttpPeer, text: str, expected_type: str | None
) -> None:
    peer.reply(answer(part()))
    await deliver(peer, text=text)
    form = peer.requests[0].form()
    assert form["text"] == [text]
    assert form.get("type") == ([expected_type] if expected_type else None)


async def test_a_notification_id_longer_than_client_ref_allows_is_not_truncated(
    peer: HttpPeer,
) -> None:
    peer.reply(answer(part()))
    await deliver(peer, notification_id="n-" + "9" * 40)
    assert "client-ref" not in peer.requests[0].form()


def test_config_hides_the_secret() -> None:
    configured = VonageConfig(api_key=API_KEY, api_secret=API_SECRET, sender="AcmeInc")
    assert configured.base_url == "https://rest.nexmo.com"
    assert API_SECRET not in repr(configured) and API_SECRET not in configured.model_dump_json()


# A delivery receipt as Vonage sends it (developer.vonage.com, "Delivery receipts").
DLR = {
    "msisdn": "447700900000",
    "to": "AcmeInc",
    "network-code": "23410",
    "messageId": MESSAGE_ID,
    "price": "0.03330000",
    "status": "delivered",
    "scts": "2001011400",
    "err-code": "0",
    "api-key": API_KEY,
    "client-ref": "n-1",
    "message-timestamp": "2020-01-01 14:00:03",
}


@pytest.mark.parametrize(
    ("fields", "status", "reason"),
    [
        ({}, "delivered", None),
        ({"status": "failed", "err-code": "3"}, "failed", "failed (err-code 3)"),
        ({"status": "rejected", "err-code": "6"}, "failed", "rejected (err-code 6)"),
        ({"status": "expired", "err-code": "2"}, "failed", "expired (err-code 2)"),
    ],
    ids=["delivered", "failed", "rejected", "expired"],
)
def test_delivery_receipts_become_receipts(
    fields: dict[str, str], status: str, reason: str | None
) -> None:
    dlr = {**DLR, **fields}
    [receipt] = parse_receipts(dlr)
    assert receipt.model_dump() == {
        "provider": "vonage",
        "provider_event_id": f"{MESSAGE_ID}:{dlr['status']}",
        "status": status,
        "provider_message_id": MESSAGE_ID,
        "notification_id": "n-1",
        "tenant_id": None,
        "reason": reason,
        "occurred_at": 1_577_887_200_000,  # scts 2001011400 = 2020-01-01 14:00 UTC
    }


def test_receipt_time_falls_back_to_message_timestamp_then_now() -> None:
    [receipt] = parse_receipts({**DLR, "scts": ""})
    assert receipt.occurred_at == 1_577_887_203_000
    [receipt] = parse_receipts({**DLR, "scts": "", "message-timestamp": ""}, now=1_700_000_000)
    assert receipt.occurred_at == 1_700_000_000_000


@pytest.mark.parametrize("status", ["accepted", "buffered", "unknown"])
def test_intermediate_receipts_are_skipped(status: str) -> None:
    assert parse_receipts({**DLR, "status": status}) == []
