"""SES v2 against an HttpPeer: the SigV4-signed SendEmail request, answers, SNS receipts."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import re
from typing import Any

import botocore.auth
import pytest
from botocore.credentials import Credentials

from connectors import aws
from connectors.receipts import Receipt
from connectors.ses import SesConfig, SesConnector, parse_receipts
from tests.support.http_peer import HttpPeer, Recorded, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

ACCESS_KEY = "AKID"
SECRET_KEY = "test-secret-not-real/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-1"
SENDER = "Acme <notify@acme.test>"
AUTHORIZATION = re.compile(
    rf"^AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/(?P<date>\d{{8}})/{REGION}/ses/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)
CORAL = "http://internal.amazon.com/coral/com.amazonaws.sesv2/"


def ses_error(status: int, code: str, text: str) -> Reply:
    """SES's REST-JSON error: the name in x-amzn-ErrorType, the text in the body."""
    return Reply(status, json={"message": text}, headers={"x-amzn-ErrorType": f"{code}:{CORAL}"})


SUCCESS = [
    Case(
        "200-sent",
        Reply(
            200, json={"MessageId": "010001812345abcd-11111111-2222-3333-4444-555555555555-000000"}
        ),
        {
            "outcome": "sent",
            "provider": "ses",
            "provider_message_id": "010001812345abcd-11111111-2222-3333-4444-555555555555-000000",
            "retriable": False,
        },
    ),
    # SES accepted it: an unexpected body must not make the pipeline send it again.
    Case(
        "200-without-message-id",
        Reply(200, body=b""),
        {"outcome": "sent", "provider_message_id": None, "retriable": False},
    ),
]

PROVIDER_ERRORS = [
    Case(
        "400-message-rejected",
        ses_error(400, "MessageRejected", "Message contains a virus"),
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": False,
            "address_invalid": False,
            "reason": "HTTP 400 MessageRejected: Message contains a virus",
        },
    ),
    Case(
        "400-sandbox-unverified-recipient",
        ses_error(
            400,
            "MessageRejected",
            "Email address is not verified. The following "
            "identities failed the check in region EU-WEST-1: ada@example.test",
        ),
        {"outcome": "failed", "retriable": False, "provider_fault": True, "address_invalid": False},
    ),
    Case(
        "400-illegal-address",
        ses_error(400, "BadRequestException", "Illegal address"),
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": False,
            "address_invalid": True,
            "reason": "HTTP 400 BadRequestException: Illegal address",
        },
    ),
    Case(
        "400-bad-request-other",
        ses_error(400, "BadRequestException", "1 validation error detected"),
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": False,
            "address_invalid": False,
        },
    ),
    Case(
        "429-too-many-requests",
        ses_error(429, "TooManyRequestsException", "Maximum sending rate exceeded."),
        {
            "outcome": "failed",
            "retriable": True,
            "provider_fault": True,
            "retry_after": None,
            "reason": "HTTP 429 TooManyRequestsException: Maximum sending rate exceeded.",
        },
    ),
    Case(
        "400-account-suspended",
        ses_error(400, "AccountSuspendedException", "Your account has been suspended."),
        {"outcome": "failed", "retriable": False, "provider_fault": True, "address_invalid": False},
    ),
    Case(
        "400-sending-paused",
        ses_error(400, "SendingPausedException", "Sending is paused for this account."),
        {"outcome": "failed", "retriable": False, "provider_fault": True},
    ),
    Case(
        "400-mail-from-not-verified",
        ses_error(400, "MailFromDomainNotVerifiedException", "MAIL FROM domain not verified"),
        {"outcome": "failed", "retriable": False, "provider_fault": True},
    ),
    Case(
        "404-configuration-set-missing",
        ses_error(404, "NotFoundException", "Configuration set <events> does not exist."),
        {"outcome": "failed", "retriable": False, "provider_fault": True},
    ),
    Case(
        "400-name-in-body-only",
        Reply(
            400, json={"__type": "com.amazonaws.sesv2#SendingPausedException", "message": "paused"}
        ),
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": True,
            "reason": "HTTP 400 SendingPausedException: paused",
        },
    ),
]


def config(peer: HttpPeer, **overrides: Any) -> SesConfig:
    values: dict[str, Any] = {
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "sender": SENDER,
        "configuration_set": "notification-events",
        "base_url": peer.url,
        "timeout_seconds": TEST_TIMEOUT_SECONDS,
    }
    values.update(overrides)
    return SesConfig(**values)


async def send(peer: HttpPeer, **overrides: Any) -> Any:
    ses = SesConnector(config(peer, **overrides.pop("config", {})), egress=LOCAL_PEERS)
    try:
        return await ses.deliver(message(**overrides))
    finally:
        await ses.close()


@pytest.mark.parametrize("case", [c.param() for c in SUCCESS + STANDARD_FAULTS + PROVIDER_ERRORS])
async def test_send_maps_the_answer_and_sends_a_signed_send_email(
    peer: HttpPeer, case: Case
) -> None:
    peer.reply(case.reply)
    result = await send(peer)

    assert_result(result, case.expect)
    assert SECRET_KEY not in repr(result)
    [request] = peer.requests
    assert (request.method, request.path) == ("POST", "/v2/email/outbound-emails")
    assert request.headers["content-type"] == "application/json"
    authorization = AUTHORIZATION.match(request.headers["authorization"])
    assert authorization, request.headers["authorization"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", request.headers["x-amz-date"])
    assert request.headers["x-amz-date"][:8] == authorization["date"]
    assert {"content-type", "host", "x-amz-date"} <= set(authorization["signed"].split(";"))
    assert request.json() == {
        "FromEmailAddress": SENDER,
        "Destination": {"ToAddresses": ["ada@example.test"]},
        "Content": {
            "Simple": {
                "Subject": {"Data": "Your order shipped", "Charset": "UTF-8"},
                "Body": {
                    "Text": {"Data": "Order 42 is on its way.", "Charset": "UTF-8"},
                    "Html": {"Data": "<p>Order 42 is on its way.</p>", "Charset": "UTF-8"},
                },
            }
        },
        "EmailTags": [
            {"Name": "notification_id", "Value": "n-1"},
            {"Name": "tenant_id", "Value": "acme"},
        ],
        "ConfigurationSetName": "notification-events",
    }


def reference_signature(
    secret: str, request: Recorded, signed: list[str], region: str, service: str
) -> str:
    """SigV4 written from AWS's documented algorithm, independently of botocore."""
    amz_date = request.headers["x-amz-date"]
    canonical_headers = "".join(
        f"{name}:{' '.join(request.headers[name].split())}\n" for name in signed
    )
    canonical_request = "\n".join(
        [
            request.method,
            request.path,
            "",  # no query
            canonical_headers,
            ";".join(signed),
            hashlib.sha256(request.body).hexdigest(),
        ]
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


# AWS's Signature Version 4 test suite: credentials, time and expected signatures of the
# get-vanilla and post-vanilla requests.
VECTOR_CREDENTIALS = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
VECTORS = [
    ("GET", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("POST", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
]


@pytest.mark.parametrize(("method", "expected"), VECTORS, ids=["get-vanilla", "post-vanilla"])
def test_the_reference_signer_reproduces_the_aws_test_suite(method: str, expected: str) -> None:
    request = Recorded(
        method=method,
        path="/",
        query={},
        headers={"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"},
        body=b"",
    )
    signature = reference_signature(
        VECTOR_CREDENTIALS[1], request, ["host", "x-amz-date"], "us-east-1", "service"
    )
    assert signature == expected


@pytest.mark.parametrize(("method", "expected"), VECTORS, ids=["get-vanilla", "post-vanilla"])
def test_aws_sign_reproduces_the_aws_test_suite(
    monkeypatch: pytest.MonkeyPatch, method: str, expected: str
) -> None:
    monkeypatch.setattr(
        botocore.auth,
        "get_current_datetime",
        lambda *_, **__: datetime.datetime(2015, 8, 30, 12, 36),
    )
    headers = aws.sign(
        method,
        "https://example.amazonaws.com/",
        b"",
        {},
        "us-east-1",
        "service",
        Credentials(*VECTOR_CREDENTIALS),
    )
    assert headers == {
        "X-Amz-Date": "20150830T123600Z",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/"
        f"aws4_request, SignedHeaders=host;x-amz-date, Signature={expected}",
    }


@pytest.mark.parametrize("token", [None, "session-token-not-real"], ids=["keys", "session"])
async def test_the_recorded_request_carries_a_valid_signature(
    peer: HttpPeer, token: str | None
) -> None:
    peer.reply(SUCCESS[0].reply)
    await send(peer, config={"session_token": token})
    [request] = peer.requests
    authorization = AUTHORIZATION.match(request.headers["authorization"])
    assert authorization
    signed = authorization["signed"].split(";")
    if token:
        assert request.headers["x-amz-security-token"] == token
        assert "x-amz-security-token" in signed
    else:
        assert "x-amz-security-token" not in request.headers
    expected = reference_signature(SECRET_KEY, request, signed, REGION, "ses")
    assert authorization["signature"] == expected
    # The same check fails for a body other than the one signed.
    tampered = Recorded(**{**request.__dict__, "body": request.body.replace(b"n-1", b"n-2")})
    assert reference_signature(SECRET_KEY, tampered, signed, REGION, "ses") != expected


async def test_optional_parts_and_tags_ses_would_refuse_are_left_out(peer: HttpPeer) -> None:
    peer.reply(SUCCESS[0].reply)
    await send(peer, html=None, tenant_id="acme.eu", config={"configuration_set": None})
    body = peer.requests[-1].json()
    assert "Html" not in body["Content"]["Simple"]["Body"]
    assert body["EmailTags"] == [{"Name": "notification_id", "Value": "n-1"}]
    assert "ConfigurationSetName" not in body


def test_config_defaults_and_validation() -> None:
    config = SesConfig(
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        sender=SENDER,
        region="ap-southeast-2",
        session_token="tok-secret",
    )
    assert config.base_url == "https://email.ap-southeast-2.amazonaws.com"
    assert SECRET_KEY not in repr(config) and "tok-secret" not in repr(config)
    for sender in ("no-at-sign", "Acme <notify@>", "a b@acme.test"):
        with pytest.raises(ValueError):
            SesConfig(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, sender=sender)


# Shaped like AWS's "Examples of event data that Amazon SES publishes to Amazon SNS", inside
# the SNS notification envelope.
MESSAGE_ID = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"
MAIL = {
    "timestamp": "2017-08-05T00:40:02.012Z",
    "source": "Sender Name <sender@example.com>",
    "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
    "sendingAccountId": "123456789012",
    "messageId": MESSAGE_ID,
    "destination": ["recipient@example.com"],
    "headersTruncated": False,
    "headers": [{"name": "From", "value": "Sender Name <sender@example.com>"}],
    "commonHeaders": {
        "from": ["Sender Name <sender@example.com>"],
        "to": ["recipient@example.com"],
        "messageId": MESSAGE_ID,
        "subject": "Message sent from Amazon SES",
    },
    "tags": {
        "ses:configuration-set": ["ConfigSet"],
        "ses:source-ip": ["192.0.2.0"],
        "ses:from-domain": ["example.com"],
        "ses:caller-identity": ["ses_user"],
        "notification_id": ["n-1"],
        "tenant_id": ["acme"],
    },
}


def sns(event: dict[str, Any], sns_id: str, kind: str = "Notification") -> dict[str, Any]:
    return {
        "Type": kind,
        "MessageId": sns_id,
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-events",
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(event),
        "Timestamp": "2017-08-05T00:41:03.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+...",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }


def bounce(kind: str, subkind: str) -> dict[str, Any]:
    return {
        "eventType": "Bounce",
        "bounce": {
            "bounceType": kind,
            "bounceSubType": subkind,
            "bouncedRecipients": [
                {
                    "emailAddress": "recipient@example.com",
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": "2017-08-05T00:41:02.669Z",
            "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
            "reportingMTA": "dsn; mta.example.com",
        },
        "mail": MAIL,
    }


def receipt(sns_id: str, status: str, reason: str | None, occurred_at: int) -> Receipt:
    return Receipt(
        provider="ses",
        provider_event_id=sns_id,
        status=status,  # type: ignore[arg-type]
        provider_message_id=MESSAGE_ID,
        notification_id="n-1",
        tenant_id="acme",
        reason=reason,
        occurred_at=occurred_at,
    )


DELIVERY = {
    "eventType": "Delivery",
    "mail": MAIL,
    "delivery": {
        "timestamp": "2017-08-05T00:40:03.123Z",
        "processingTimeMillis": 546,
        "recipients": ["recipient@example.com"],
        "smtpResponse": "250 ok:  Message 64111812 accepted",
        "reportingMTA": "a8-70.smtp-out.amazonses.com",
    },
}


@pytest.mark.parametrize(
    ("notification", "expected"),
    [
        (sns(DELIVERY, "sns-1"), [receipt("sns-1", "delivered", None, 1501893603123)]),
        (
            sns(bounce("Permanent", "General"), "sns-2"),
            [
                receipt(
                    "sns-2",
                    "bounced",
                    "Permanent/General: smtp; 550 5.1.1 user unknown",
                    1501893662669,
                )
            ],
        ),
        (
            sns(bounce("Transient", "MailboxFull"), "sns-3"),
            [
                receipt(
                    "sns-3",
                    "failed",
                    "Transient/MailboxFull: smtp; 550 5.1.1 user unknown",
                    1501893662669,
                )
            ],
        ),
        (
            sns(
                {"eventType": "Reject", "mail": MAIL, "reject": {"reason": "Bad content"}}, "sns-4"
            ),
            [receipt("sns-4", "failed", "rejected by SES: Bad content", 1501893602012)],
        ),
        (
            sns(
                {
                    "eventType": "DeliveryDelay",
                    "mail": MAIL,
                    "deliveryDelay": {"delayType": "TransientCommunicationFailure"},
                },
                "sns-5",
            ),
            [],
        ),
        (sns({"eventType": "Complaint", "mail": MAIL, "complaint": {}}, "sns-6"), []),
        (sns({"eventType": "Send", "mail": MAIL, "send": {}}, "sns-7"), []),
        (sns(DELIVERY, "sns-8", kind="SubscriptionConfirmation"), []),
    ],
    ids=[
        "delivery",
        "permanent-bounce",
        "transient-bounce",
        "reject",
        "delivery-delay",
        "complaint",
        "send",
        "subscription-confirmation",
    ],
)
def test_parse_receipts(notification: dict[str, Any], expected: list[Receipt]) -> None:
    assert parse_receipts(notification) == expected


def test_identity_notifications_without_tags_and_malformed_messages() -> None:
    # Feedback notifications straight from an identity: notificationType, no tags.
    legacy = {**DELIVERY, "notificationType": "Delivery", "mail": {**MAIL, "tags": {}}}
    del legacy["eventType"]
    [receipt_] = parse_receipts(sns(legacy, "sns-9"))
    assert receipt_.status == "delivered" and receipt_.notification_id is None
    assert receipt_.provider_message_id == MESSAGE_ID
    assert parse_receipts({**sns(DELIVERY, "sns-10"), "Message": "not json"}) == []
