"""Twilio SMS and WhatsApp through the real twilio SDK, against a local peer playing the API.

The SDK builds and parses everything; connectors.twilio_http only moves the bytes to the peer.
Each row checks the typed result and the exact request Twilio's Messages API expects.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from connectors.base import DeliveryResult
from connectors.twilio_http import TwilioHttpxClient
from connectors.twilio_sms import TwilioConfig, TwilioSmsConnector
from connectors.twilio_sms import parse_receipts as parse_sms_receipts
from connectors.twilio_whatsapp import TwilioWhatsAppConnector
from connectors.twilio_whatsapp import parse_receipts as parse_whatsapp_receipts
from tests.support.http_peer import HttpPeer, Recorded, Reply
from tests.support.ports import free_port
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

ACCOUNT_SID = "AC" + "3f9a" * 8
AUTH_TOKEN = "auth-token-" + "5e" * 11
MESSAGE_SID = "SM" + "7c1d" * 8
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
CALLBACK = "https://hooks.acme.test/twilio/status"
SENDER = "+15005550006"
RECIPIENT = "+14155550123"
TEXT = "Order 42 is on its way."


def created() -> Reply:
    """Twilio's 201 for a new Message resource (abridged)."""
    return Reply(
        201,
        json={
            "sid": MESSAGE_SID,
            "account_sid": ACCOUNT_SID,
            "status": "queued",
            "to": RECIPIENT,
            "from": SENDER,
            "body": TEXT,
            "num_segments": "1",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
            "error_code": None,
            "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{MESSAGE_SID}.json",
        },
    )


def twilio_error(status: int, code: int, text: str, **headers: str) -> Reply:
    """Twilio's REST error body, as the API answers it."""
    body = {
        "code": code,
        "message": text,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return Reply(status, json=body, headers=headers)


SUCCESS = [Case("201-created", created(), {"outcome": "sent", "provider_message_id": MESSAGE_SID})]

TWILIO_FAULTS = [
    Case(
        "21211-invalid-to",
        twilio_error(400, 21211, f"The 'To' number {RECIPIENT} is not a valid phone number."),
        {"outcome": "failed", "retriable": False, "address_invalid": True, "provider_fault": False},
    ),
    Case(
        "21614-not-mobile",
        twilio_error(400, 21614, f"'To' number {RECIPIENT} is not a valid mobile number"),
        {"outcome": "failed", "retriable": False, "address_invalid": True},
    ),
    Case(
        "20003-authenticate",
        twilio_error(401, 20003, "Authenticate"),
        {"outcome": "failed", "retriable": False, "provider_fault": True},
    ),
    Case(
        "21408-region-not-enabled",
        twilio_error(400, 21408, "Permission to send an SMS has not been enabled for the region"),
        {"outcome": "failed", "retriable": False, "provider_fault": True, "address_invalid": False},
    ),
    Case(
        "21610-unsubscribed",
        twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"),
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": False,
            "address_invalid": False,
        },
    ),
    Case(
        "20429-too-many-requests",
        twilio_error(429, 20429, "Too Many Requests", **{"Retry-After": "3"}),
        {"outcome": "failed", "retriable": True, "retry_after": 3.0, "provider_fault": True},
    ),
    Case(
        "20500-internal",
        twilio_error(500, 20500, "Internal Server Error"),
        {"outcome": "failed", "retriable": True, "provider_fault": True},
    ),
]

ROWS = [case.param() for case in SUCCESS + STANDARD_FAULTS + TWILIO_FAULTS]

CONNECTORS = {"sms": TwilioSmsConnector, "whatsapp": TwilioWhatsAppConnector}
PREFIX = {"sms": "", "whatsapp": "whatsapp:"}


def config(peer: HttpPeer, **overrides: Any) -> TwilioConfig:
    values: dict[str, Any] = {
        "base_url": peer.url,
        "timeout_seconds": TEST_TIMEOUT_SECONDS,
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "from_number": SENDER,
        "status_callback": CALLBACK,
    }
    values.update(overrides)
    return TwilioConfig(**values)


async def deliver(
    peer: HttpPeer, channel: str, config_overrides: dict[str, Any] | None = None, **fields: Any
) -> DeliveryResult:
    connector = CONNECTORS[channel](config(peer, **(config_overrides or {})), egress=LOCAL_PEERS)
    try:
        return await connector.deliver(message(channel=channel, to=RECIPIENT, **fields))
    finally:
        await connector.close()


def assert_twilio_request(request: Recorded) -> None:
    """What every create request carries: the resource, Basic auth, the SDK's own headers."""
    assert request.method == "POST"
    assert request.path == MESSAGES_PATH
    credentials = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {credentials}"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["user-agent"].startswith("twilio-python/")
    assert request.headers["i-twilio-idempotency-token"] == "n-1"


@pytest.mark.parametrize("channel", ["sms", "whatsapp"])
@pytest.mark.parametrize("case", ROWS)
async def test_answers_become_typed_results_and_the_request_is_twilios(
    peer: HttpPeer, channel: str, case: Case
) -> None:
    peer.reply(case.reply)
    result = await deliver(peer, channel)
    assert_result(result, {"provider": CONNECTORS[channel].name, **case.expect})
    [request] = peer.requests
    assert_twilio_request(request)
    prefix = PREFIX[channel]
    assert request.form() == {
        "To": [prefix + RECIPIENT],
        "From": [prefix + SENDER],
        "Body": [TEXT],
        "StatusCallback": [f"{CALLBACK}?notification_id=n-1"],
    }
    assert AUTH_TOKEN not in repr(result)


async def test_the_reason_names_the_twilio_code_and_status(peer: HttpPeer) -> None:
    peer.reply(twilio_error(400, 21211, "The 'To' number +1555 is not a valid phone number."))
    result = await deliver(peer, "sms")
    assert result.reason is not None
    assert result.reason.startswith("Twilio HTTP 400, error 21211: Unable to create record")


async def test_connection_refused_is_retriable() -> None:
    connector = TwilioSmsConnector(
        TwilioConfig(
            base_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
            timeout_seconds=TEST_TIMEOUT_SECONDS,
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            from_number=SENDER,
        ),
        egress=LOCAL_PEERS,
    )
    try:
        result = await connector.deliver(message(channel="sms", to=RECIPIENT))
    finally:
        await connector.close()
    assert_result(result, {"outcome": "failed", "retriable": True, "provider_fault": True})
    assert result.reason == "connection failed: ConnectError"


async def test_messaging_service_replaces_from_and_long_bodies_are_trimmed(peer: HttpPeer) -> None:
    peer.reply(created())
    result = await deliver(
        peer,
        "sms",
        {"from_number": None, "messaging_service_sid": "MG" + "1" * 32, "status_callback": None},
        text="x" * 2000,
    )
    assert result.ok
    form = peer.requests[0].form()
    assert form["MessagingServiceSid"] == ["MG" + "1" * 32]
    assert "From" not in form and "StatusCallback" not in form
    [body] = form["Body"]
    assert len(body) == TwilioSmsConnector.max_body_len and body.endswith("…")


async def test_sms_ignores_media_urls(peer: HttpPeer) -> None:
    peer.reply(created())
    await deliver(
        peer, "sms", data_json=json.dumps({"media_urls": ["https://cdn.acme.test/a.png"]})
    )
    assert "MediaUrl" not in peer.requests[0].form()


@pytest.mark.parametrize(
    ("data", "to", "expected"),
    [
        pytest.param(
            {"media_urls": ["https://cdn.acme.test/receipt.pdf", "https://cdn.acme.test/2.png"]},
            RECIPIENT,
            {"Body": [TEXT], "MediaUrl": ["https://cdn.acme.test/receipt.pdf"]},
            id="first-media-url",
        ),
        pytest.param(
            {
                "whatsapp_template": {
                    "content_sid": "HXb5b62575e6e4ff6129ad7c8efe1f983e",
                    "content_variables": {"1": "Ada", "2": "42"},
                },
                "media_urls": ["https://cdn.acme.test/ignored.png"],
            },
            RECIPIENT,
            {
                "ContentSid": ["HXb5b62575e6e4ff6129ad7c8efe1f983e"],
                "ContentVariables": ['{"1": "Ada", "2": "42"}'],
            },
            id="content-template",
        ),
        pytest.param(
            {"whatsapp_template": {"content_sid": "HX00", "content_variables": '{"1":"Ada"}'}},
            RECIPIENT,
            {"ContentSid": ["HX00"], "ContentVariables": ['{"1":"Ada"}']},
            id="content-variables-as-json-string",
        ),
        pytest.param({}, f"whatsapp:{RECIPIENT}", {"Body": [TEXT]}, id="prefix-not-doubled"),
    ],
)
async def test_whatsapp_content(
    peer: HttpPeer, data: dict[str, Any], to: str, expected: dict[str, list[str]]
) -> None:
    peer.reply(created())
    connector = TwilioWhatsAppConnector(config(peer), egress=LOCAL_PEERS)
    try:
        result = await connector.deliver(
            message(channel="whatsapp", to=to, data_json=json.dumps(data))
        )
    finally:
        await connector.close()
    assert result.ok
    [request] = peer.requests
    assert_twilio_request(request)
    form = request.form()
    assert form.pop("To") == [f"whatsapp:{RECIPIENT}"]
    assert form.pop("From") == [f"whatsapp:{SENDER}"]
    assert form.pop("StatusCallback") == [f"{CALLBACK}?notification_id=n-1"]
    assert form == expected


async def test_whatsapp_template_without_content_sid_fails_before_sending(peer: HttpPeer) -> None:
    data = {"whatsapp_template": {"name": "order_shipped", "language": "en_US"}}
    result = await deliver(peer, "whatsapp", data_json=json.dumps(data))
    assert_result(result, {"outcome": "failed", "retriable": False, "provider_fault": False})
    assert peer.requests == []


def test_status_callback_keeps_its_own_query_and_fragment() -> None:
    connector = TwilioSmsConnector(
        TwilioConfig(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            from_number=SENDER,
            status_callback="https://hooks.acme.test/twilio?tenant=acme#rc=3",
        )
    )
    params = connector.params(message(channel="sms", to=RECIPIENT, notification_id="n-9"))
    assert params["status_callback"] == (
        "https://hooks.acme.test/twilio?tenant=acme&notification_id=n-9#rc=3"
    )


def test_config_needs_a_sender_and_hides_the_token() -> None:
    with pytest.raises(ValueError, match="from_number or messaging_service_sid"):
        TwilioConfig(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    configured = TwilioConfig(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=SENDER)
    assert configured.base_url == "https://api.twilio.com"
    assert AUTH_TOKEN not in repr(configured) and AUTH_TOKEN not in str(configured)
    assert AUTH_TOKEN not in configured.model_dump_json()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://api.twilio.com/2010-04-01/Accounts.json",
            "http://peer:1/2010-04-01/Accounts.json",
        ),
        (
            "https://api.dublin.ie1.twilio.com/2010-04-01/A.json?x=1",
            "http://peer:1/2010-04-01/A.json?x=1",
        ),
        ("https://media.twilio.com/v1/x", "https://media.twilio.com/v1/x"),
    ],
)
def test_transport_rewrites_only_the_api_origin(url: str, expected: str) -> None:
    transport = TwilioHttpxClient(None, base_url="http://peer:1/")  # type: ignore[arg-type]
    assert transport.rewrite(url) == expected


# Status callbacks as Twilio posts them (form fields), from Twilio's "track outbound message
# status" guide; notification_id comes from the StatusCallback URL's query string.
DELIVERED = {
    "AccountSid": ACCOUNT_SID,
    "ApiVersion": "2010-04-01",
    "From": SENDER,
    "MessageSid": MESSAGE_SID,
    "MessageStatus": "delivered",
    "RawDlrDoneDate": "2308240501",
    "SmsSid": MESSAGE_SID,
    "SmsStatus": "delivered",
    "To": RECIPIENT,
    "notification_id": "n-1",
}
UNDELIVERED = {**DELIVERED, "MessageStatus": "undelivered", "ErrorCode": "30003"}
WHATSAPP_READ = {
    "AccountSid": ACCOUNT_SID,
    "ApiVersion": "2010-04-01",
    "ChannelInstallSid": "XE" + "0" * 32,
    "ChannelPrefix": "whatsapp",
    "ChannelToAddress": "+14155550XXX",
    "From": f"whatsapp:{SENDER}",
    "MessageSid": MESSAGE_SID,
    "MessageStatus": "read",
    "SmsSid": MESSAGE_SID,
    "SmsStatus": "read",
    "To": f"whatsapp:{RECIPIENT}",
    "notification_id": "n-1",
}
WHATSAPP_WINDOW_CLOSED = {**WHATSAPP_READ, "MessageStatus": "failed", "ErrorCode": "63016"}


@pytest.mark.parametrize(
    ("parse", "form", "expected"),
    [
        (parse_sms_receipts, DELIVERED, ("twilio", "delivered", None)),
        (parse_sms_receipts, UNDELIVERED, ("twilio", "failed", "Twilio error 30003")),
        (parse_whatsapp_receipts, WHATSAPP_READ, ("twilio_whatsapp", "read", None)),
        (
            parse_whatsapp_receipts,
            WHATSAPP_WINDOW_CLOSED,
            ("twilio_whatsapp", "failed", "Twilio error 63016"),
        ),
    ],
    ids=["delivered", "undelivered-30003", "whatsapp-read", "whatsapp-63016-window"],
)
def test_status_callbacks_become_receipts(
    parse: Any, form: dict[str, str], expected: tuple[str, str, str | None]
) -> None:
    [receipt] = parse(form, now=1_692_853_305.5)
    provider, status, reason = expected
    assert receipt.model_dump() == {
        "provider": provider,
        "provider_event_id": f"{MESSAGE_SID}:{form['MessageStatus']}",
        "status": status,
        "provider_message_id": MESSAGE_SID,
        "notification_id": "n-1",
        "tenant_id": None,
        "reason": reason,
        "occurred_at": 1_692_853_305_500,
    }


@pytest.mark.parametrize("status", ["queued", "sending", "sent", "accepted", "scheduled"])
def test_progress_callbacks_are_not_receipts(status: str) -> None:
    assert parse_sms_receipts({**DELIVERED, "MessageStatus": status}) == []
