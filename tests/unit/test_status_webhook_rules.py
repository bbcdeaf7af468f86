"""Outgoing status webhooks without a broker: matching, the delivery job and its signed body,
how answers are judged, the retry schedule, and one real POST per kind of answer against a
local HTTP peer (the SSRF guard, timeouts, refused connections, redirects)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from connectors.egress import Egress, guarded_client
from connectors.webhook import verify
from core.sealing import SealingError, SecretBox, new_key
from schemas import SchemaCatalog, build_codec
from streams.delivery.retry import tier_for
from streams.webhooks.retry import Next, next_step
from streams.webhooks.rules import (
    RESPONSE_EXCERPT_CHARS,
    Answer,
    body,
    delivery_id,
    delivery_job,
    headers,
    judge,
    log_record,
    matches,
    sealed_as,
    secrets_to_seal,
    signing_secrets,
)
from streams.webhooks.sender import post
from tests.support.http_peer import HttpPeer, Reply
from tests.support.ports import free_port

CODEC = build_codec(None, SchemaCatalog.load())
NOW = 1_700_000_000_000


def status_event(status: str = "delivered", tenant: str = "acme", **changes: Any) -> dict[str, Any]:
    event = {
        "event_id": f"evt-{status}",
        "notification_id": "n-1",
        "request_id": "r-1",
        "tenant_id": tenant,
        "batch_id": None,
        "channel": "email",
        "recipient_id": "u-1",
        "status": status,
        "reason": None,
        "retriable": False,
        "provider": "smtp",
        "provider_message_id": "m-1",
        "stage": "deliver",
        "attempt": 0,
        "deferred_until": None,
        "request_occurred_at": NOW - 1000,
        "occurred_at": NOW,
        **changes,
    }
    CODEC.encode("StatusEvent", event)  # the same shape the status topic carries
    return event


def subscription(tenant: str = "acme", sid: str = "s-1", **changes: Any) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "subscription_id": sid,
        "url": "https://hooks.example.com/in",
        "event_types": [],
        "secret_sealed": b"",
        "enabled": True,
        "description": None,
        "created_at": NOW,
        "updated_at": NOW,
        **changes,
    }


# -- matching ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "status", "expected"),
    [
        ({}, "delivered", True),  # no event types: every status
        ({}, "read", True),
        ({"event_types": ["delivered", "failed"]}, "failed", True),
        ({"event_types": ["delivered", "failed"]}, "sent", False),
        ({"enabled": False}, "delivered", False),
        ({"tenant_id": "globex"}, "delivered", False),  # never another tenant's events
    ],
)
def test_a_subscription_gets_its_tenants_events_of_its_types(
    changes: dict[str, Any], status: str, expected: bool
) -> None:
    assert matches(subscription(**changes), status_event(status)) is expected


def test_delivery_ids_are_stable_per_event_and_subscription() -> None:
    assert delivery_id("e1", "s1") == delivery_id("e1", "s1")
    assert len({delivery_id("e1", "s1"), delivery_id("e1", "s2"), delivery_id("e2", "s1")}) == 3


# -- the job, the body, the signature ---------------------------------------------------------


def test_the_job_fits_its_schema_and_the_body_carries_the_status_event() -> None:
    event = status_event("failed", reason="mailbox full", retriable=True)
    job = delivery_job(event, subscription(), NOW)
    CODEC.encode("WebhookDelivery", job)
    assert job["attempt"] == 1 and job["not_before"] is None
    assert job["delivery_id"] == delivery_id(event["event_id"], "s-1")

    sent = json.loads(body(job))
    assert sent == {
        "delivery_id": job["delivery_id"],
        "subscription_id": "s-1",
        "tenant_id": "acme",
        "event_type": "failed",
        "created_at": "2023-11-14T22:13:20.000Z",
        "data": event,
    }
    # Every attempt sends the same bytes: a retry is the same delivery.
    assert body({**job, "attempt": 3, "not_before": NOW + 5000}) == body(job)


def test_headers_are_signed_over_timestamp_and_body() -> None:
    job = delivery_job(status_event(), subscription(), NOW)
    payload = body(job)
    sent = headers(job, payload, ["whsec_current"], 1_700_000_123)
    assert sent["X-Webhook-Id"] == sent["Idempotency-Key"] == job["delivery_id"]
    assert sent["X-Webhook-Event"] == "delivered"
    assert sent["X-Webhook-Attempt"] == "1"
    assert sent["X-Notification-Timestamp"] == "1700000123"
    # Recomputed by hand: the recipe docs/api.md gives receivers.
    digest = hmac.new(b"whsec_current", b"1700000123." + payload, hashlib.sha256).hexdigest()
    assert sent["X-Notification-Signature"] == f"v1={digest}"
    assert verify(
        "whsec_current", sent["X-Notification-Signature"], "1700000123", payload, now=1_700_000_123
    )
    assert not verify(
        "whsec_other", sent["X-Notification-Signature"], "1700000123", payload, now=1_700_000_123
    )


def test_during_a_rotation_both_secrets_sign() -> None:
    opened = secrets_to_seal("new", previous="old", previous_until_ms=NOW + 1000)
    assert signing_secrets(opened, NOW) == ["new", "old"]
    assert signing_secrets(opened, NOW + 1000) == ["new"]  # the grace period is over
    assert signing_secrets(secrets_to_seal("only"), NOW) == ["only"]

    job = delivery_job(status_event(), subscription(), NOW)
    payload = body(job)
    signature = headers(job, payload, ["new", "old"], 1_700_000_000)["X-Notification-Signature"]
    assert signature.count("v1=") == 2
    for secret in ("new", "old"):
        assert verify(secret, signature, "1700000000", payload, now=1_700_000_000)


def test_sealed_secrets_open_only_for_their_tenant_and_subscription() -> None:
    box = SecretBox.from_settings(new_key(), "k1")
    assert box is not None
    blob = box.seal(secrets_to_seal("s3cret"), tenant_id="acme", provider_id=sealed_as("s-1"))
    assert box.open(blob, tenant_id="acme", provider_id=sealed_as("s-1")) == {"secret": "s3cret"}
    for tenant, sid in (("globex", "s-1"), ("acme", "s-2")):
        with pytest.raises(SealingError):
            box.open(blob, tenant_id=tenant, provider_id=sealed_as(sid))


# -- judging answers and scheduling retries ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (408, "transient"),
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
        (301, "permanent"),  # redirects are never followed
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (410, "permanent"),
    ],
)
def test_answers_are_judged_by_status(status: int, verdict: str) -> None:
    answer = judge(status, None, "x" * 2000)
    assert answer.verdict == verdict and answer.http_status == status
    assert answer.response_body is not None
    assert len(answer.response_body) == RESPONSE_EXCERPT_CHARS == 256


def test_retry_after_is_read_in_seconds_or_as_a_date() -> None:
    assert judge(429, "7", None).retry_after == 7.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    retry_after = judge(503, date, None).retry_after
    assert retry_after is not None and 55 <= retry_after <= 60


def _job(attempt: int) -> dict[str, Any]:
    return {**delivery_job(status_event(), subscription(), NOW), "attempt": attempt}


def _next(job: dict[str, Any], answer: Answer) -> Next:
    return next_step(job, answer, now_ms=NOW, max_attempts=5, base_seconds=10.0, cap_seconds=300.0)


def test_transient_failures_back_off_exponentially_with_jitter_up_to_the_cap() -> None:
    for attempt in range(1, 5):
        waits = [_next(_job(attempt), Answer("transient")).wait_seconds for _ in range(50)]
        delay = min(300.0, 10.0 * 2 ** (attempt - 1))
        assert all(delay / 2 <= w <= delay for w in waits), (attempt, waits)
        assert len(set(waits)) > 1  # jittered


def test_a_retry_is_parked_on_the_tier_of_its_wait_with_the_next_attempt() -> None:
    step = _next(_job(2), Answer("transient", 503))
    assert step.outcome == "retrying" and step.retry is not None
    assert step.retry["attempt"] == 3
    assert step.retry["not_before"] == NOW + int(step.wait_seconds * 1000)
    assert step.retry_topic == f"webhooks.retry.{tier_for(step.wait_seconds)}"
    CODEC.encode("WebhookDelivery", step.retry)


def test_retry_after_is_honoured_within_the_cap() -> None:
    step = _next(_job(1), Answer("transient", 429, retry_after=120.0))
    assert step.wait_seconds == 120.0 and step.retry_topic == "webhooks.retry.long"
    capped = _next(_job(1), Answer("transient", 429, retry_after=86400.0))
    assert capped.wait_seconds == 300.0


@pytest.mark.parametrize(
    ("attempt", "answer", "outcome"),
    [
        (1, Answer("delivered", 200), "delivered"),
        (1, Answer("permanent", 400), "failed"),
        (4, Answer("transient", 503), "retrying"),
        (5, Answer("transient", 503), "failed"),  # the last attempt
    ],
)
def test_deliveries_end_delivered_or_failed(attempt: int, answer: Answer, outcome: str) -> None:
    step = _next(_job(attempt), answer)
    assert step.outcome == outcome
    assert (step.retry is not None) is (outcome == "retrying")


def test_the_log_record_fits_its_schema_and_says_why() -> None:
    answer = Answer("transient", 503, error="HTTP 503", duration_ms=12)
    record = log_record(_job(5), answer, "failed", url="https://x.example", now_ms=NOW)
    CODEC.encode("WebhookDeliveryAttempt", record)
    assert record["attempt_id"] == f"{record['delivery_id']}:5"
    assert record["error"] == "HTTP 503; giving up after 5 attempts"
    assert record["http_status"] == 503 and record["duration_ms"] == 12


# -- one real POST per kind of answer ---------------------------------------------------------


@pytest.fixture
def peer() -> Any:
    with HttpPeer() as running:
        yield running


async def _post(url: str, *, allow_private: bool = True, limit_seconds: float = 2.0) -> Answer:
    # The peer listens on 127.0.0.1: tests that reach it allow private targets explicitly.
    async with guarded_client(Egress(allow_private=allow_private)) as client:
        return await post(
            client,
            url,
            b'{"x":1}',
            {"Content-Type": "application/json", "X-Webhook-Id": "d-1"},
            timeout_seconds=limit_seconds,
        )


async def test_a_post_reaches_the_receiver_as_sent(peer: HttpPeer) -> None:
    peer.reply(Reply(202, body=b"thanks"))
    answer = await _post(f"{peer.url}/in")
    assert answer.verdict == "delivered" and answer.http_status == 202
    # The answer came from 127.0.0.1: a non-public peer's body never reaches the
    # tenant-readable delivery log.
    assert answer.response_body is None
    (request,) = peer.requests
    assert request.method == "POST" and request.path == "/in"
    assert request.body == b'{"x":1}' and request.headers["x-webhook-id"] == "d-1"


async def test_a_busy_receiver_is_retried_after_what_it_asks(peer: HttpPeer) -> None:
    peer.reply(Reply(503, headers={"Retry-After": "7"}, body=b"busy"))
    answer = await _post(f"{peer.url}/in")
    assert (answer.verdict, answer.http_status, answer.retry_after) == ("transient", 503, 7.0)


async def test_a_redirect_is_not_followed(peer: HttpPeer) -> None:
    peer.reply(Reply(302, headers={"Location": f"{peer.url}/elsewhere"}))
    answer = await _post(f"{peer.url}/in")
    assert answer.verdict == "permanent" and answer.http_status == 302
    assert [r.path for r in peer.requests] == ["/in"]


async def test_a_slow_receiver_times_out(peer: HttpPeer) -> None:
    peer.reply(Reply(200, delay=1.5))
    answer = await _post(f"{peer.url}/in", limit_seconds=0.3)
    assert answer.verdict == "transient" and answer.http_status is None
    assert answer.error == "no answer within 0.3s"


async def test_a_refused_connection_is_transient() -> None:
    answer = await _post(f"http://127.0.0.1:{free_port()}/in")
    assert answer.verdict == "transient" and answer.error is not None
    assert answer.error.startswith("connection failed")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/in",  # loopback
        "http://10.1.2.3/in",  # private
        "http://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
        "http://[::1]:{port}/in",
        "ftp://hooks.example.com/in",  # not http(s), refused whatever the setting
    ],
)
async def test_the_ssrf_guard_refuses_non_public_targets_before_connecting(
    peer: HttpPeer, url: str
) -> None:
    port = peer.url.rpartition(":")[2]
    answer = await _post(url.format(port=port), allow_private=False)
    assert answer.verdict == "permanent" and answer.http_status is None
    assert answer.error is not None and answer.error.startswith("target refused")
    assert peer.requests == []
