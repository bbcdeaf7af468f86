"""Inbound webhook signature checks, one provider at a time.

Each signature is computed here from the provider's documented algorithm (not with the code
under test): a valid one passes, and changing the body, the URL, a parameter, the timestamp
or the key makes it fail.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from connectors import mailgun, meta_whatsapp, sendgrid, ses, twilio_sms, webhook
from connectors.sendgrid import SendGridConfig

NOW = 1_760_000_000.0

# -- Twilio -------------------------------------------------------------------------------

TWILIO_TOKEN = "twilio-auth-token-0123"
CALLBACK_URL = "https://notify.example.com/api/v1/inbound/acme/twilio-sms?notification_id=n-1"
FORM = [
    ("MessageSid", "SM0123456789abcdef"),
    ("MessageStatus", "delivered"),
    ("AccountSid", "AC0123"),
    ("To", "+15550001"),
    ("ErrorCode", ""),
]


def twilio_signature(
    token: str, url: str, form: list[tuple[str, str]], digest: Any = hashlib.sha1
) -> str:
    """Twilio's documented recipe: the URL, then each name + value sorted by name, HMAC
    keyed with the auth token, base64."""
    data = url + "".join(name + value for name, value in sorted(form))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), digest).digest()).decode()


def test_twilio_accepts_its_signature_and_refuses_any_change() -> None:
    good = twilio_signature(TWILIO_TOKEN, CALLBACK_URL, FORM)
    assert twilio_sms.verify_callback(TWILIO_TOKEN, CALLBACK_URL, FORM, good)

    changed_param = [(n, "failed" if n == "MessageStatus" else v) for n, v in FORM]
    other_url = CALLBACK_URL.replace("n-1", "n-2")
    assert not twilio_sms.verify_callback(TWILIO_TOKEN, CALLBACK_URL, changed_param, good)
    assert not twilio_sms.verify_callback(TWILIO_TOKEN, other_url, FORM, good)
    assert not twilio_sms.verify_callback(TWILIO_TOKEN, CALLBACK_URL, [*FORM, ("X", "1")], good)
    assert not twilio_sms.verify_callback("another-token", CALLBACK_URL, FORM, good)
    assert not twilio_sms.verify_callback(TWILIO_TOKEN, CALLBACK_URL, FORM, "")


def test_twilio_repeated_fields_and_the_sha256_setting() -> None:
    form = [*FORM, ("MediaUrl", "b"), ("MediaUrl", "a")]
    good = twilio_signature(TWILIO_TOKEN, CALLBACK_URL, form)
    assert twilio_sms.verify_callback(TWILIO_TOKEN, CALLBACK_URL, form, good)
    assert not twilio_sms.verify_callback(TWILIO_TOKEN, CALLBACK_URL, form[:-1], good)

    sha256 = twilio_signature(TWILIO_TOKEN, CALLBACK_URL, FORM, hashlib.sha256)
    settings = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    assert twilio_sms.verify_callback(
        TWILIO_TOKEN, CALLBACK_URL, FORM, sha256, signature_settings=settings
    )
    # Without the header the SHA-1 recipe applies, so the SHA-256 signature does not.
    assert not twilio_sms.verify_callback(TWILIO_TOKEN, CALLBACK_URL, FORM, sha256)


# -- SendGrid -----------------------------------------------------------------------------

SENDGRID_BODY = json.dumps(
    [{"event": "delivered", "sg_event_id": "e-1", "timestamp": int(NOW)}], separators=(",", ":")
).encode()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_der_b64(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def sendgrid_signature(key: ec.EllipticCurvePrivateKey, timestamp: str, body: bytes) -> str:
    return base64.b64encode(key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


def test_sendgrid_accepts_its_signature_and_refuses_any_change(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    public = public_der_b64(ec_key)
    stamp = str(int(NOW))
    good = sendgrid_signature(ec_key, stamp, SENDGRID_BODY)
    assert sendgrid.verify_event_webhook(public, SENDGRID_BODY, good, stamp, now=NOW)

    changed = SENDGRID_BODY.replace(b"delivered", b"bounce")
    assert not sendgrid.verify_event_webhook(public, changed, good, stamp, now=NOW)
    assert not sendgrid.verify_event_webhook(
        public, SENDGRID_BODY, good, str(int(NOW) + 1), now=NOW
    )
    assert not sendgrid.verify_event_webhook(public, SENDGRID_BODY, "not base64!", stamp, now=NOW)
    other = public_der_b64(ec.generate_private_key(ec.SECP256R1()))
    assert not sendgrid.verify_event_webhook(other, SENDGRID_BODY, good, stamp, now=NOW)


def test_sendgrid_refuses_a_stale_timestamp_even_when_signed(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    public = public_der_b64(ec_key)
    old = str(int(NOW) - sendgrid.EVENT_WEBHOOK_TOLERANCE_SECONDS - 1)
    signed_old = sendgrid_signature(ec_key, old, SENDGRID_BODY)
    assert not sendgrid.verify_event_webhook(public, SENDGRID_BODY, signed_old, old, now=NOW)
    future = str(int(NOW) + 600)
    signed = sendgrid_signature(ec_key, future, SENDGRID_BODY)
    assert not sendgrid.verify_event_webhook(
        public, SENDGRID_BODY, signed, future, tolerance_seconds=300, now=NOW
    )
    assert sendgrid.verify_event_webhook(public, SENDGRID_BODY, signed, future, now=NOW)


def test_sendgrid_key_formats_and_unusable_keys(ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = (
        ec_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    stamp = str(int(NOW))
    good = sendgrid_signature(ec_key, stamp, SENDGRID_BODY)
    assert sendgrid.verify_event_webhook(pem, SENDGRID_BODY, good, stamp, now=NOW)

    rsa_key = public_der_b64(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for bad in ("not a key", rsa_key, base64.b64encode(b"junk").decode()):
        with pytest.raises(ValueError, match="webhook_public_key"):
            sendgrid.load_public_key(bad)
        with pytest.raises(ValidationError, match="webhook_public_key"):
            SendGridConfig.model_validate(
                {"api_key": "k", "sender": "a@example.com", "webhook_public_key": bad}
            )


# -- Mailgun ------------------------------------------------------------------------------

MAILGUN_KEY = "mailgun-signing-key"


def mailgun_block(timestamp: str, token: str, key: str = MAILGUN_KEY) -> dict[str, str]:
    digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": timestamp, "token": token, "signature": digest}


def test_mailgun_accepts_its_signature_and_refuses_changes_and_stale_timestamps() -> None:
    stamp, token = str(int(NOW)), "t" * 50
    good = mailgun_block(stamp, token)
    assert mailgun.verify_webhook(MAILGUN_KEY, good, now=NOW)
    assert not mailgun.verify_webhook(MAILGUN_KEY, {**good, "token": "u" * 50}, now=NOW)
    assert not mailgun.verify_webhook(
        MAILGUN_KEY, {**good, "timestamp": str(int(NOW) + 1)}, now=NOW
    )
    assert not mailgun.verify_webhook("other-key", good, now=NOW)
    assert not mailgun.verify_webhook(MAILGUN_KEY, {"token": token, "signature": "x"}, now=NOW)

    old = str(int(NOW - mailgun.WEBHOOK_TOLERANCE_SECONDS - 1))
    assert not mailgun.verify_webhook(MAILGUN_KEY, mailgun_block(old, token), now=NOW)


# -- Meta WhatsApp ------------------------------------------------------------------------

APP_SECRET = "meta-app-secret"
META_BODY = b'{"object":"whatsapp_business_account","entry":[]}'


def test_meta_accepts_its_signature_and_refuses_any_change() -> None:
    digest = hmac.new(APP_SECRET.encode(), META_BODY, hashlib.sha256).hexdigest()
    assert meta_whatsapp.verify_signature(APP_SECRET, META_BODY, f"sha256={digest}")
    assert not meta_whatsapp.verify_signature(APP_SECRET, META_BODY + b" ", f"sha256={digest}")
    assert not meta_whatsapp.verify_signature("other", META_BODY, f"sha256={digest}")
    assert not meta_whatsapp.verify_signature(APP_SECRET, META_BODY, f"sha1={digest}")
    assert not meta_whatsapp.verify_signature(APP_SECRET, META_BODY, digest)
    assert not meta_whatsapp.verify_signature(APP_SECRET, META_BODY, "sha256=é")


def test_meta_subscription_handshake() -> None:
    assert meta_whatsapp.verify_subscription("vt-1", "subscribe", "vt-1")
    assert not meta_whatsapp.verify_subscription("vt-1", "subscribe", "vt-2")
    assert not meta_whatsapp.verify_subscription("vt-1", "unsubscribe", "vt-1")
    assert not meta_whatsapp.verify_subscription("vt-1", "subscribe", None)


# -- SES through SNS ----------------------------------------------------------------------

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-events"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"


@pytest.fixture(scope="module")
def sns_signer() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def sns_message(key: rsa.RSAPrivateKey, version: str, **fields: str) -> dict[str, str]:
    """An SNS message signed as AWS documents: "Name\\nvalue\\n" for each signed field in
    this order, RSA PKCS#1 v1.5 with SHA-1 (version 1) or SHA-256 (version 2)."""
    message = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": TOPIC,
        "Message": json.dumps({"eventType": "Delivery"}),
        "Timestamp": "2025-10-09T10:00:00.000Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        **fields,
    }
    order = (
        ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        if message["Type"] == "Notification"
        else ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    )
    text = "".join(f"{name}\n{message[name]}\n" for name in order if name in message)
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text.encode(), padding.PKCS1v15(), digest)
    message["Signature"] = base64.b64encode(signature).decode()
    return message


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_accepts_its_signature_and_refuses_any_change(
    sns_signer: tuple[rsa.RSAPrivateKey, bytes], version: str
) -> None:
    key, cert = sns_signer
    good = sns_message(key, version)
    assert ses.verify_sns_signature(good, cert)
    with_subject = sns_message(key, version, Subject="hello")
    assert ses.verify_sns_signature(with_subject, cert)

    assert not ses.verify_sns_signature({**good, "Message": '{"eventType":"Bounce"}'}, cert)
    assert not ses.verify_sns_signature({**good, "TopicArn": TOPIC + "-other"}, cert)
    assert not ses.verify_sns_signature({**with_subject, "Subject": "changed"}, cert)
    assert not ses.verify_sns_signature({**good, "SignatureVersion": "3"}, cert)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not ses.verify_sns_signature(sns_message(other_key, version), cert)
    assert not ses.verify_sns_signature(good, b"not a certificate")


def test_sns_subscription_confirmation_is_signed_over_its_own_fields(
    sns_signer: tuple[rsa.RSAPrivateKey, bytes],
) -> None:
    key, cert = sns_signer
    confirm = sns_message(
        key,
        "2",
        Type="SubscriptionConfirmation",
        Token="tok",
        SubscribeURL="https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=tok",
    )
    assert ses.verify_sns_signature(confirm, cert)
    changed = {**confirm, "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?x"}
    assert not ses.verify_sns_signature(changed, cert)


@pytest.mark.parametrize(
    ("url", "certificate", "allowed"),
    [
        (CERT_URL, True, True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem", True, True),
        ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription", False, True),
        ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription", True, False),
        ("http://sns.us-east-1.amazonaws.com/cert.pem", True, False),
        ("https://sns.us-east-1.amazonaws.com.evil.example/cert.pem", True, False),
        ("https://evil.example/sns.us-east-1.amazonaws.com/cert.pem", True, False),
        ("https://sns.us-east-1.amazonaws.com:8443/cert.pem", True, False),
        ("https://user@sns.us-east-1.amazonaws.com/cert.pem", True, False),
        ("https://127.0.0.1/cert.pem", True, False),
        ("not a url", True, False),
    ],
)
def test_sns_urls_must_be_sns_endpoints(url: str, certificate: bool, allowed: bool) -> None:
    assert ses.is_sns_url(url, certificate=certificate) is allowed


# -- Generic (our own recipe) -------------------------------------------------------------

INBOUND_SECRET = "inbound-secret"


def test_generic_signature_and_body() -> None:
    body = json.dumps(
        {
            "events": [
                {
                    "notification_id": "n-1",
                    "status": "read",
                    "provider_event_id": "ev-1",
                    "occurred_at": 1_760_000_000_000,
                }
            ]
        }
    ).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(INBOUND_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    header = f"v1={digest.hexdigest()}"
    assert webhook.verify(INBOUND_SECRET, header, stamp, body)
    assert not webhook.verify(INBOUND_SECRET, header, stamp, body.replace(b"read", b"failed"))
    assert not webhook.verify(INBOUND_SECRET, header, str(int(stamp) + 1), body)

    [receipt] = webhook.parse_receipts(json.loads(body))
    assert (receipt.provider, receipt.provider_event_id, receipt.status) == (
        "webhook",
        "ev-1",
        "read",
    )
    assert (receipt.notification_id, receipt.occurred_at) == ("n-1", 1_760_000_000_000)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (
            {
                "events": [
                    {
                        "notification_id": "n",
                        "status": "sent",
                        "provider_event_id": "e",
                        "occurred_at": 1,
                    }
                ]
            },
            "status",
        ),
        (
            {"events": [{"notification_id": "n", "status": "read", "occurred_at": 1}]},
            "provider_event_id",
        ),
        (
            {
                "events": [
                    {
                        "notification_id": "n",
                        "status": "read",
                        "provider_event_id": "e",
                        "occurred_at": 1,
                        "x": 1,
                    }
                ]
            },
            "x",
        ),
        ({"events": []}, "events"),
        ([], "InboundEvents"),
    ],
)
def test_generic_body_is_validated(payload: Any, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        webhook.parse_receipts(payload)
