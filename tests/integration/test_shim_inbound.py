"""Inbound provider webhooks through the real shim against the real broker.

The tenants' provider configurations are ProviderConfig events on config.providers with their
secrets AES-GCM sealed, as the admin API and `streams.config` write them; the shim opens them
with its PROVIDER_SECRETS_KEY. Each request is signed here with the provider's documented
recipe, and what the shim wrote is read back from notifications.receipts and decoded. A
refused request must write nothing: the shim answers only after Kafka acknowledged its
writes, so the topic's end offsets before and after the answer tell.

The receipts stage itself (receipt -> status event, once per provider event id) is covered by
test_receipts.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api_shim import inbound_sns
from api_shim.app import create_app
from core.catalog import TopicCatalog
from core.kafka_clients import admin_config, consumer_config, producer_config
from core.provision import provision
from core.sealing import SecretBox, new_key
from core.settings import Settings
from schemas import SchemaCatalog, build_codec
from tests.support.pipeline import Process, wait_until
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

CODEC = build_codec(None, SchemaCatalog.load())
KEY = new_key()
BOX = SecretBox.from_settings(KEY, "k1")
PUBLIC_URL = "https://notify.example.test"

TWILIO_TOKEN = "acme-twilio-token"
GLOBEX_TWILIO_TOKEN = "globex-twilio-token"
MAILGUN_KEY = "acme-mailgun-signing-key"
META_SECRET = "acme-meta-app-secret"
META_VERIFY_TOKEN = "acme-verify-token"
INBOUND_SECRET = "acme-inbound-secret"
SES_TOPIC = "arn:aws:sns:eu-west-1:123456789012:acme-ses-events"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


def provider(
    tenant: str,
    provider_id: str,
    name: str,
    channel: str,
    settings: dict[str, str],
    secrets: dict[str, str],
    sealed_for: tuple[str, str] | None = None,
) -> dict[str, Any]:
    assert BOX is not None
    owner, pid = sealed_for or (tenant, provider_id)
    return {
        "tenant_id": tenant,
        "provider_id": provider_id,
        "channel": channel,
        "provider": name,
        "enabled": True,
        "priority": 0,
        "settings": settings,
        "secrets_sealed": BOX.seal(secrets, tenant_id=owner, provider_id=pid),
        "updated_at": 1,
    }


SENDER = {"sender": "notify@acme.example"}
CONFIGS = [
    provider(
        "acme",
        "twilio-sms",
        "twilio",
        "sms",
        {"account_sid": "AC1", "from_number": "+15550100"},
        {"auth_token": TWILIO_TOKEN},
    ),
    provider(
        "acme",
        "sendgrid",
        "sendgrid",
        "email",
        {**SENDER, "webhook_public_key": SENDGRID_PUBLIC},
        {"api_key": "SG.x"},
    ),
    provider("acme", "sendgrid-unsigned", "sendgrid", "email", SENDER, {"api_key": "SG.x"}),
    provider(
        "acme",
        "mailgun",
        "mailgun",
        "email",
        {**SENDER, "domain": "mg.acme.example"},
        {"api_key": "key-x", "webhook_signing_key": MAILGUN_KEY},
    ),
    provider(
        "acme",
        "meta",
        "meta_whatsapp",
        "whatsapp",
        {"phone_number_id": "1234"},
        {
            "access_token": "EAA",
            "app_secret": META_SECRET,
            "webhook_verify_token": META_VERIFY_TOKEN,
        },
    ),
    provider(
        "acme",
        "hooks",
        "webhook",
        "webhook",
        {"url": "https://hooks.acme.example/n"},
        {"secret": "outgoing-secret", "inbound_secret": INBOUND_SECRET},
    ),
    provider(
        "acme",
        "ses",
        "ses",
        "email",
        {**SENDER, "access_key_id": "AKIA1", "sns_topic_arn": SES_TOPIC},
        {"secret_access_key": "s"},
    ),
    # A provider that sends no receipts at all.
    provider("acme", "smtp", "smtp", "email", {"host": "smtp.acme.example"}, {"password": "p"}),
    provider(
        "acme",
        "vonage",
        "vonage",
        "sms",
        {"api_key": "k", "sender": "Acme"},
        {"api_secret": "s"},
    ),
    provider(
        "globex",
        "globex-twilio",
        "twilio",
        "sms",
        {"account_sid": "AC2", "from_number": "+15550200"},
        {"auth_token": GLOBEX_TWILIO_TOKEN},
    ),
    provider(
        "*",
        "platform-hooks",
        "webhook",
        "webhook",
        {"url": "https://hooks.platform.example/n"},
        {"secret": "platform-outgoing", "inbound_secret": "platform-inbound"},
    ),
    # globex's sealed secrets copied into an acme configuration: they do not open.
    provider(
        "acme",
        "copied",
        "twilio",
        "sms",
        {"account_sid": "AC2", "from_number": "+15550200"},
        {"auth_token": GLOBEX_TWILIO_TOKEN},
        sealed_for=("globex", "globex-twilio"),
    ),
]


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, fresh_database: str) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t-{uuid.uuid4().hex[:12]}.",
        database_url=fresh_database,
        provider_secrets_key=SecretStr(KEY),
        shim_public_url=PUBLIC_URL,
    )
    provision(settings)
    topics = TopicCatalog.load(settings)
    producer = Producer(producer_config(settings))
    for record in CONFIGS:
        producer.produce(
            topics.name("config.providers"),
            key=f"{record['tenant_id']}:{record['provider_id']}".encode(),
            value=CODEC.encode("ProviderConfig", record),
        )
    assert producer.flush(30) == 0
    return settings


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


class Receipts:
    """Everything on notifications.receipts, read from the beginning, decoded."""

    def __init__(self, settings: Settings) -> None:
        self.topic = TopicCatalog.load(settings).name("notifications.receipts")
        self.consumer = Consumer(consumer_config(settings, f"test-{uuid.uuid4().hex[:8]}"))
        partitions = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        self.partitions = sorted(partitions)
        self.consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self.partitions]
        )
        self.records: list[tuple[str, dict[str, Any]]] = []  # (key, record)
        self.admin = AdminClient(admin_config(settings))

    def end_offsets(self) -> dict[int, int]:
        """partition -> end offset, in one request."""
        query = {TopicPartition(self.topic, p): OffsetSpec.latest() for p in self.partitions}
        answers = self.admin.list_offsets(query, request_timeout=10)
        return {tp.partition: future.result().offset for tp, future in answers.items()}

    def wait_for(self, event_ids: set[str], count: int = 1) -> list[tuple[str, dict[str, Any]]]:
        """The records with these provider event ids, once each id was seen `count` times."""
        deadline = time.monotonic() + 20
        while True:
            found = [(k, r) for k, r in self.records if r["provider_event_id"] in event_ids]
            seen = [r["provider_event_id"] for _, r in found]
            if all(seen.count(e) >= count for e in event_ids):
                return found
            assert time.monotonic() < deadline, f"receipts {event_ids} not found; seen {seen}"
            msg = self.consumer.poll(0.2)
            if msg is not None and not msg.error():
                key, value = msg.key(), msg.value()
                assert key is not None and value is not None
                self.records.append((key.decode(), CODEC.decode(value, "ProviderReceipt")))


@pytest.fixture(scope="module")
def receipts(settings: Settings, client: TestClient) -> Iterator[Receipts]:
    reader = Receipts(settings)
    yield reader
    reader.consumer.close()


def refused_without_writing(receipts: Receipts, send: Any, status: int, words: str) -> None:
    before = receipts.end_offsets()
    response = send()
    assert response.status_code == status, response.text
    assert words in response.json()["message"]
    assert receipts.end_offsets() == before


def path(provider_id: str, tenant: str = "acme") -> str:
    return f"/api/v1/inbound/{tenant}/{provider_id}"


# -- Twilio -------------------------------------------------------------------------------


def twilio_signature(token: str, url: str, form: dict[str, str]) -> str:
    """Twilio's documented recipe: base64 HMAC-SHA1 of the URL + sorted name/value pairs."""
    data = url + "".join(k + v for k, v in sorted(form.items()))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def post_twilio(
    client: TestClient, provider_id: str, nid: str, form: dict[str, str], signature: str
) -> Any:
    return client.post(
        f"{path(provider_id)}?notification_id={nid}",
        content=urlencode(form),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )


def test_twilio_status_callback_becomes_a_receipt_and_a_redelivery_repeats_it(
    client: TestClient, receipts: Receipts
) -> None:
    nid, sid = f"n-{uuid.uuid4().hex[:8]}", f"SM{uuid.uuid4().hex}"
    form = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    # Signed over the public URL Twilio called, not the URL the shim sees behind its proxy.
    url = f"{PUBLIC_URL}{path('twilio-sms')}?notification_id={nid}"
    signature = twilio_signature(TWILIO_TOKEN, url, form)

    for _ in range(2):  # Twilio retrying the callback
        response = post_twilio(client, "twilio-sms", nid, form, signature)
        assert response.status_code == 200, response.text
        assert response.json() == {"receipts": 1, "skipped": 0}

    found = receipts.wait_for({f"{sid}:undelivered"}, count=2)
    assert [key for key, _ in found] == [nid, nid]
    # The same event id (the receipts stage applies it once); occurred_at is when each
    # callback was parsed, as Twilio's carry no event time.
    first, again = (dict(r, occurred_at=0) for _, r in found)
    assert first == again
    record = found[0][1]
    assert (record["provider"], record["status"], record["tenant_id"]) == (
        "twilio",
        "failed",
        "acme",
    )
    assert (record["notification_id"], record["provider_message_id"]) == (nid, sid)
    assert record["reason"] == "Twilio error 30003"


def test_twilio_refusals_write_nothing(client: TestClient, receipts: Receipts) -> None:
    nid = "n-refused"
    form = {"MessageSid": "SM1", "MessageStatus": "delivered"}
    url = f"{PUBLIC_URL}{path('twilio-sms')}?notification_id={nid}"
    good = twilio_signature(TWILIO_TOKEN, url, form)

    def send(form: dict[str, str], signature: str, provider_id: str = "twilio-sms") -> Any:
        return lambda: post_twilio(client, provider_id, nid, form, signature)

    changed = {**form, "MessageStatus": "read"}
    refused_without_writing(receipts, send(changed, good), 401, "X-Twilio-Signature")
    other_tenant = twilio_signature(GLOBEX_TWILIO_TOKEN, url, form)  # globex's own token
    refused_without_writing(receipts, send(form, other_tenant), 401, "auth_token")
    # The URL as the shim received it is not the public URL Twilio called.
    as_received = twilio_signature(TWILIO_TOKEN, f"http://testserver{path('twilio-sms')}", form)
    refused_without_writing(receipts, send(form, as_received), 401, "SHIM_PUBLIC_URL")
    refused_without_writing(
        receipts,
        lambda: client.post(
            f"{path('twilio-sms')}?notification_id={nid}",
            content=urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        401,
        "X-Twilio-Signature header is missing",
    )
    # globex's configuration is not found under acme's path, even with globex's signature.
    globex_url = f"{PUBLIC_URL}{path('globex-twilio')}?notification_id={nid}"
    globex_signed = twilio_signature(GLOBEX_TWILIO_TOKEN, globex_url, form)
    refused_without_writing(
        receipts, send(form, globex_signed, "globex-twilio"), 404, "no receipt endpoint"
    )
    # An acme configuration holding globex's sealed secrets: they do not open for acme.
    refused_without_writing(receipts, send(form, good, "copied"), 503, "cannot be opened")


# -- SendGrid -----------------------------------------------------------------------------


def sendgrid_post(client: TestClient, body: bytes, timestamp: str, signature: str) -> Any:
    return client.post(
        path("sendgrid"),
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": signature,
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        },
    )


def sendgrid_sign(timestamp: str, body: bytes) -> str:
    signature = SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


def test_sendgrid_batch_becomes_receipts(client: TestClient, receipts: Receipts) -> None:
    tag = uuid.uuid4().hex[:8]
    now = int(time.time())

    def event(kind: str, nid: str, tenant: str = "acme", **extra: Any) -> dict[str, Any]:
        return {
            "event": kind,
            "sg_event_id": f"sg-{tag}-{kind}-{nid}",
            "sg_message_id": f"msg-{nid}.filter0001",
            "timestamp": now,
            "notification_id": nid,
            "tenant_id": tenant,
            **extra,
        }

    events = [
        event("delivered", "n1"),
        event("bounce", "n2", type="bounce", reason="550 unknown user"),
        event("open", "n1"),  # says nothing about delivery
        event("delivered", "n3", tenant="globex"),  # another tenant's: not written
    ]
    body = json.dumps(events).encode()
    stamp = str(now)
    response = sendgrid_post(client, body, stamp, sendgrid_sign(stamp, body))
    assert response.status_code == 200, response.text
    assert response.json() == {"receipts": 2, "skipped": 1}

    found = dict(
        (r["provider_event_id"], (k, r))
        for k, r in receipts.wait_for({f"sg-{tag}-delivered-n1", f"sg-{tag}-bounce-n2"})
    )
    key, delivered = found[f"sg-{tag}-delivered-n1"]
    assert (key, delivered["status"], delivered["provider_message_id"]) == (
        "n1",
        "delivered",
        "msg-n1",
    )
    key, bounced = found[f"sg-{tag}-bounce-n2"]
    assert (key, bounced["status"], bounced["reason"]) == ("n2", "bounced", "550 unknown user")
    assert {delivered["tenant_id"], bounced["tenant_id"]} == {"acme"}
    assert delivered["occurred_at"] == now * 1000


def test_sendgrid_refusals_write_nothing(client: TestClient, receipts: Receipts) -> None:
    body = json.dumps([{"event": "delivered", "sg_event_id": "x", "timestamp": 1}]).encode()
    stamp = str(int(time.time()))
    good = sendgrid_sign(stamp, body)
    tampered = body.replace(b"delivered", b"bounce")
    refused_without_writing(
        receipts, lambda: sendgrid_post(client, tampered, stamp, good), 401, "webhook_public_key"
    )
    stale = str(int(time.time()) - 30 * 3600)
    refused_without_writing(
        receipts,
        lambda: sendgrid_post(client, body, stale, sendgrid_sign(stale, body)),
        401,
        "stale",
    )
    refused_without_writing(
        receipts,
        lambda: client.post(
            path("sendgrid"),
            content=body,
            headers={"Content-Type": "text/csv", "X-Twilio-Email-Event-Webhook-Signature": good},
        ),
        415,
        "application/json",
    )
    refused_without_writing(
        receipts,
        lambda: client.post(
            path("sendgrid-unsigned"), content=body, headers={"Content-Type": "application/json"}
        ),
        403,
        "no webhook_public_key",
    )


# -- Mailgun ------------------------------------------------------------------------------


def mailgun_payload(event_id: str, nid: str) -> dict[str, Any]:
    stamp, token = str(int(time.time())), uuid.uuid4().hex + uuid.uuid4().hex[:18]
    digest = hmac.new(MAILGUN_KEY.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": stamp, "token": token, "signature": digest},
        "event-data": {
            "id": event_id,
            "event": "failed",
            "severity": "permanent",
            "reason": "bounce",
            "timestamp": time.time(),
            "delivery-status": {"code": 550, "description": "mailbox unavailable"},
            "message": {"headers": {"message-id": "20250101.abc@mg.acme.example"}},
            "user-variables": {"notification_id": nid, "tenant_id": "acme"},
        },
    }


def test_mailgun_event_becomes_a_receipt(client: TestClient, receipts: Receipts) -> None:
    event_id = f"mg-{uuid.uuid4().hex[:8]}"
    response = client.post(path("mailgun"), json=mailgun_payload(event_id, "n-mg"))
    assert response.status_code == 200, response.text
    [(key, record)] = receipts.wait_for({event_id})
    assert (key, record["provider"], record["status"]) == ("n-mg", "mailgun", "bounced")
    assert record["reason"] == "bounce: 550 mailbox unavailable"
    assert record["provider_message_id"] == "20250101.abc@mg.acme.example"


def test_mailgun_refusals_write_nothing(client: TestClient, receipts: Receipts) -> None:
    payload = mailgun_payload("mg-x", "n-mg")
    forged = {**payload, "signature": {**payload["signature"], "signature": "0" * 64}}
    refused_without_writing(
        receipts, lambda: client.post(path("mailgun"), json=forged), 401, "webhook_signing_key"
    )
    unsigned = {"event-data": payload["event-data"]}
    refused_without_writing(
        receipts, lambda: client.post(path("mailgun"), json=unsigned), 401, "not signed"
    )
    # A captured signature cannot carry another event: its token is bound to the first body.
    response = client.post(path("mailgun"), json=payload)
    assert response.status_code == 200, response.text
    other = {**payload, "event-data": {**payload["event-data"], "id": "mg-forged"}}
    refused_without_writing(
        receipts, lambda: client.post(path("mailgun"), json=other), 401, "already used"
    )


# -- Meta WhatsApp ------------------------------------------------------------------------


def test_meta_status_becomes_a_receipt(client: TestClient, receipts: Receipts) -> None:
    wamid = f"wamid.{uuid.uuid4().hex}"
    status = {
        "id": wamid,
        "status": "read",
        "timestamp": str(int(time.time())),
        "recipient_id": "15550001",
        "biz_opaque_callback_data": "n-meta",
    }
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"changes": [{"value": {"statuses": [status]}}]}],
        }
    ).encode()
    digest = hmac.new(META_SECRET.encode(), body, hashlib.sha256).hexdigest()

    def send(signature: str, content: bytes = body) -> Any:
        return client.post(
            path("meta"),
            content=content,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
        )

    response = send(f"sha256={digest}")
    assert response.status_code == 200, response.text
    [(key, record)] = receipts.wait_for({f"{wamid}:read"})
    assert (key, record["provider"], record["status"]) == ("n-meta", "meta_whatsapp", "read")
    assert record["tenant_id"] == "acme"

    changed = body.replace(b'"read"', b'"failed"')
    refused_without_writing(receipts, lambda: send(f"sha256={digest}", changed), 401, "app_secret")


def test_meta_verification_handshake(client: TestClient) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": META_VERIFY_TOKEN, "hub.challenge": "42"}
    response = client.get(path("meta"), params=query)
    assert (response.status_code, response.text) == (200, "42")
    wrong = client.get(path("meta"), params={**query, "hub.verify_token": "guess"})
    assert wrong.status_code == 403 and "hub.verify_token" in wrong.json()["message"]
    assert client.get(path("sendgrid"), params=query).status_code == 404  # no handshake


# -- generic ------------------------------------------------------------------------------


def generic_post(
    client: TestClient, body: bytes, timestamp: str, secret: str, where: str = path("hooks")
) -> Any:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return client.post(
        where,
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Notification-Timestamp": timestamp,
            "X-Notification-Signature": f"v1={digest.hexdigest()}",
        },
    )


def test_generic_events_become_receipts(client: TestClient, receipts: Receipts) -> None:
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    event = {
        "notification_id": "n-gen",
        "status": "delivered",
        "provider_event_id": event_id,
        "occurred_at": 1_760_000_000_000,
        "reason": None,
    }
    body = json.dumps({"events": [event]}).encode()
    response = generic_post(client, body, str(int(time.time())), INBOUND_SECRET)
    assert response.status_code == 200, response.text
    # Event ids the reporting system chose are scoped to this tenant's configuration.
    [(key, record)] = receipts.wait_for({f"acme:hooks:{event_id}"})
    assert (key, record["provider"], record["status"]) == ("n-gen", "webhook", "delivered")
    assert (record["tenant_id"], record["occurred_at"]) == ("acme", 1_760_000_000_000)

    now = str(int(time.time()))
    refused_without_writing(
        receipts,
        lambda: generic_post(client, body, now, "outgoing-secret"),  # the other direction's
        401,
        "inbound_secret",
    )
    invalid = json.dumps({"events": [{**event, "status": "sent"}]}).encode()
    before = receipts.end_offsets()
    response = generic_post(client, invalid, now, INBOUND_SECRET)
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "events.0.status"
    assert receipts.end_offsets() == before


def test_platform_wide_configuration_keeps_the_tenant_the_event_names(
    client: TestClient, receipts: Receipts
) -> None:
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    event = {
        "notification_id": "n-platform",
        "status": "bounced",
        "provider_event_id": event_id,
        "occurred_at": 1_760_000_000_000,
        "reason": "550",
    }
    body = json.dumps({"events": [event]}).encode()
    where = path("platform-hooks", tenant="*")
    response = generic_post(client, body, str(int(time.time())), "platform-inbound", where)
    assert response.status_code == 200, response.text
    [(key, record)] = receipts.wait_for({f"*:platform-hooks:{event_id}"})
    # No tenant to scope it to: the receipts stage checks the notification's own.
    assert (key, record["tenant_id"], record["status"]) == ("n-platform", None, "bounced")


# -- SES, unknown and unsupported providers -----------------------------------------------


def test_ses_needs_an_sns_signature_from_its_topic(client: TestClient, receipts: Receipts) -> None:
    message = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": SES_TOPIC,
        "Message": "{}",
        "Timestamp": "2025-10-09T10:00:00.000Z",
        "SignatureVersion": "2",
        "Signature": "AAAA",
        "SigningCertURL": "https://attacker.example/SimpleNotificationService.pem",
    }

    def send(message: dict[str, Any]) -> Any:
        return client.post(
            path("ses"),
            content=json.dumps(message),
            headers={"Content-Type": "text/plain; charset=UTF-8"},
        )

    # Refused before anything is fetched from the attacker's host.
    refused_without_writing(receipts, lambda: send(message), 401, "SNS endpoint")
    other_topic = {**message, "TopicArn": "arn:aws:sns:eu-west-1:999999999999:mine"}
    refused_without_writing(receipts, lambda: send(other_topic), 401, "sns_topic_arn")


def test_a_missing_endpoint_answers_like_an_unusable_one(client: TestClient) -> None:
    # Different 404s told which tenants exist and which providers they configured.
    posts = {
        where: client.post(where, content=b"{}", headers={"Content-Type": "application/json"})
        for where in [
            path("nope"),  # acme exists, this configuration does not
            path("twilio-sms", tenant="no-such-tenant"),
            path("twilio-sms", tenant="globex"),  # acme's configuration id under globex
            path("globex-twilio"),  # globex's configuration under acme
            path("vonage"),  # configured, its receipts are not accepted yet
            path("smtp"),  # configured, its provider sends no receipts
        ]
    }
    gets = {  # Meta's handshake: to a configuration without one, or to none
        where: client.get(where, params={"hub.mode": "subscribe", "hub.challenge": "1"})
        for where in [path("nope"), path("sendgrid"), path("smtp")]
    }
    answers = {(r.status_code, r.text) for r in [*posts.values(), *gets.values()]}
    assert len(answers) == 1, answers
    [(status, text)] = answers
    assert status == 404
    body = json.loads(text)
    assert body["error"] == "not_found" and "no receipt endpoint" in body["message"]


# -- SES: a valid SNS signature on a fresh message -----------------------------------------

SNS_CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"


@pytest.fixture(scope="module")
def sns_key() -> Iterator[rsa.RSAPrivateKey]:
    """A signing key whose certificate the shim holds for SNS_CERT_URL. SNS serves its
    certificates only from AWS hosts, which a test cannot be: the shim's certificate cache is
    given the test's certificate for that URL, as if it had fetched it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    inbound_sns._certificates[SNS_CERT_URL] = certificate.public_bytes(serialization.Encoding.PEM)
    yield key
    inbound_sns._certificates.pop(SNS_CERT_URL, None)


def sns_message(key: rsa.RSAPrivateKey, message_id: str, nid: str, sent: datetime) -> bytes:
    """An SNS Notification carrying an SES bounce, signed by AWS's documented recipe
    (SignatureVersion 2: RSA SHA-256 over "Name\nvalue\n" of the signed fields, in order)."""
    event = {
        "eventType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": sent.isoformat().replace("+00:00", "Z"),
        },
        "mail": {
            "timestamp": sent.isoformat().replace("+00:00", "Z"),
            "messageId": f"ses-{message_id}",
            "tags": {"notification_id": [nid], "tenant_id": ["acme"]},
        },
    }
    message = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": SES_TOPIC,
        "Message": json.dumps(event),
        "Timestamp": sent.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "SignatureVersion": "2",
        "SigningCertURL": SNS_CERT_URL,
    }
    signed = "".join(
        f"{name}\n{message[name]}\n"
        for name in ("Message", "MessageId", "Timestamp", "TopicArn", "Type")
    )
    signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    message["Signature"] = base64.b64encode(signature).decode()
    return json.dumps(message).encode()


def test_ses_receipts_must_be_fresh(
    client: TestClient, receipts: Receipts, sns_key: rsa.RSAPrivateKey
) -> None:
    def send(body: bytes) -> Any:
        return client.post(path("ses"), content=body, headers={"Content-Type": "text/plain"})

    fresh_id = f"sns-{uuid.uuid4().hex[:8]}"
    fresh = send(sns_message(sns_key, fresh_id, "n-ses", datetime.now(UTC)))
    assert fresh.status_code == 200, fresh.text
    [(key, record)] = receipts.wait_for({fresh_id})
    assert (key, record["status"], record["tenant_id"]) == ("n-ses", "bounced", "acme")
    # Validly signed, but sent two hours ago: a replay (SNS retries for an hour at most).
    old = sns_message(
        sns_key, f"sns-{uuid.uuid4().hex[:8]}", "n-ses", datetime.now(UTC) - timedelta(hours=2)
    )
    refused_without_writing(receipts, lambda: send(old), 401, "Timestamp is stale")
    ahead = sns_message(
        sns_key, f"sns-{uuid.uuid4().hex[:8]}", "n-ses", datetime.now(UTC) + timedelta(hours=1)
    )
    refused_without_writing(receipts, lambda: send(ahead), 401, "in the future")


# -- Mailgun's token replay guard across shim processes -----------------------------------


@pytest.fixture
def second_shim(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """Another shim process (uvicorn, as deployed) on the same topics."""
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "TOPIC_PREFIX": settings.topic_prefix,
        "DATABASE_URL": settings.database_url,
        "PROVIDER_SECRETS_KEY": KEY,
        "SHIM_PUBLIC_URL": PUBLIC_URL,
        "SHIM_API_KEYS": "{}",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "uvicorn", "api_shim.app:app", "--port", str(port)]
    shim = Process("second-shim", [*argv, "--host", "127.0.0.1"], env, tmp_path)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert shim.alive(), shim.tail()
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    shim.start()
    try:
        wait_until(up, 90, "the second shim to answer /health")
        yield url
    finally:
        shim.stop()


def test_a_mailgun_token_carries_one_body_in_every_shim_process(
    client: TestClient, receipts: Receipts, second_shim: str
) -> None:
    def post(base: str | None, payload: dict[str, Any]) -> Any:
        body, headers = json.dumps(payload).encode(), {"Content-Type": "application/json"}
        if base is None:
            return client.post(path("mailgun"), content=body, headers=headers)
        return httpx.post(f"{base}{path('mailgun')}", content=body, headers=headers, timeout=30)

    event_id = f"mg-{uuid.uuid4().hex[:8]}"
    payload = mailgun_payload(event_id, "n-mg-2")
    first = post(None, payload)
    assert first.status_code == 200, first.text
    # The captured signature with another event, sent to the other process: refused there.
    forged = {**payload, "event-data": {**payload["event-data"], "id": f"{event_id}-forged"}}
    refused_without_writing(receipts, lambda: post(second_shim, forged), 401, "already used")
    # Mailgun redelivering the very same request to any process is still fine.
    again = post(second_shim, payload)
    assert again.status_code == 200, again.text
    assert {r["provider_event_id"] for _, r in receipts.wait_for({event_id}, count=2)} == {event_id}


def test_openapi_documents_the_inbound_endpoints(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operations = document["paths"]["/api/v1/inbound/{tenant_id}/{provider_id}"]
    assert {"200", "401", "403", "404", "415", "503"} <= set(operations["post"]["responses"])
    assert operations["get"]["summary"]
