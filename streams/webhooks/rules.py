"""Outgoing status webhooks, the rules as pure functions (docs/api.md, "Outgoing status
webhooks"): which subscriptions a status event goes to, the delivery job, the body and its
signed headers, how a receiver's answer is judged, and when the next attempt is due.

No Faust, no Kafka here: the shim (subscriptions, secrets) and the workers
(streams/webhooks/agents.py) share these, and unit tests call them directly.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from connectors.http import RETRYABLE_STATUS, parse_retry_after
from connectors.webhook import sign

# Delivery ids are uuid5 in this namespace: the same status event and subscription always
# give the same id, however often the event is replayed.
_NAMESPACE = uuid.UUID("5b0c3f1e-2d7a-4e8b-9c61-0a4f7e2b9d35")

USER_AGENT = "notifications-webhooks/1"
# Tenant-readable (the delivery log): enough to recognise the receiver's answer, no more.
RESPONSE_EXCERPT_CHARS = 256

Verdict = Literal["delivered", "transient", "permanent"]
Outcome = Literal["delivered", "retrying", "failed", "skipped"]


# -- subscriptions -----------------------------------------------------------------------


def subscription_key(tenant_id: str, subscription_id: str) -> str:
    """The key on config.webhook-subscriptions, webhooks.outgoing and the delivery log."""
    return f"{tenant_id}:{subscription_id}"


def sealed_as(subscription_id: str) -> str:
    """What a subscription's sealed secret is bound to, after its tenant (core/sealing.py):
    the blob opens only as `tenant_id:webhook:subscription_id`."""
    return f"webhook:{subscription_id}"


def matches(subscription: dict[str, Any], event: dict[str, Any]) -> bool:
    """Whether `event` (a StatusEvent) goes to `subscription`: same tenant, enabled, and the
    status among its event types (none listed: every status)."""
    if subscription["tenant_id"] != event["tenant_id"] or not subscription.get("enabled", True):
        return False
    wanted = subscription.get("event_types") or []
    return not wanted or event["status"] in wanted


def secrets_to_seal(
    secret: str, *, previous: str | None = None, previous_until_ms: int | None = None
) -> dict[str, str]:
    """The dict sealed into `secret_sealed`: the current secret and, after a rotation, the
    previous one with the time (epoch ms) until which it still signs too."""
    sealed = {"secret": secret}
    if previous is not None and previous_until_ms is not None:
        sealed.update(previous=previous, previous_until=str(previous_until_ms))
    return sealed


def signing_secrets(opened: dict[str, str], now_ms: int) -> list[str]:
    """The secrets to sign with: the current one, then the previous one while it is valid."""
    secrets = [opened["secret"]]
    previous, until = opened.get("previous"), opened.get("previous_until")
    if previous and until and until.isdigit() and now_ms < int(until):
        secrets.append(previous)
    return secrets


# -- deliveries --------------------------------------------------------------------------


def delivery_id(event_id: str, subscription_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{event_id}|{subscription_id}"))


def delivery_job(
    event: dict[str, Any], subscription: dict[str, Any], now_ms: int
) -> dict[str, Any]:
    """The WebhookDelivery of a status event to one subscription (its first attempt)."""
    return {
        "delivery_id": delivery_id(event["event_id"], subscription["subscription_id"]),
        "subscription_id": subscription["subscription_id"],
        "tenant_id": event["tenant_id"],
        "event_type": event["status"],
        "event_id": event["event_id"],
        "notification_id": event["notification_id"],
        "payload_json": json.dumps(event, separators=(",", ":"), ensure_ascii=False),
        "attempt": 1,
        "not_before": None,
        "created_at": now_ms,
    }


def _iso(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body(job: dict[str, Any]) -> bytes:
    """The POST body: the same bytes on every attempt of a delivery (compact UTF-8 JSON)."""
    envelope = {
        "delivery_id": job["delivery_id"],
        "subscription_id": job["subscription_id"],
        "tenant_id": job["tenant_id"],
        "event_type": job["event_type"],
        "created_at": _iso(job["created_at"]),
        "data": json.loads(job["payload_json"]),
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


def headers(
    job: dict[str, Any], payload: bytes, secrets: list[str], timestamp: int
) -> dict[str, str]:
    """Signed headers. With two secrets (during a rotation) the signature header lists one
    signature per secret, comma-separated; `connectors.webhook.verify` accepts either."""
    signature = ",".join(sign(secret, timestamp, payload) for secret in secrets)
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Webhook-Id": job["delivery_id"],
        "Idempotency-Key": job["delivery_id"],
        "X-Webhook-Event": job["event_type"],
        "X-Webhook-Attempt": str(job["attempt"]),
        "X-Notification-Timestamp": str(timestamp),
        "X-Notification-Signature": signature,
    }


@dataclass(frozen=True)
class Answer:
    """How one attempt went."""

    verdict: Verdict
    http_status: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds the receiver asked us to wait
    response_body: str | None = None
    duration_ms: int = 0


def judge(status: int, retry_after_header: str | None, response_body: str | None) -> Answer:
    """A receiver's HTTP answer: 2xx delivered; 408, 425, 429 and 5xx transient (Retry-After
    honoured); anything else (other 4xx, and 3xx: redirects are never followed) permanent."""
    excerpt = (response_body or "")[:RESPONSE_EXCERPT_CHARS] or None
    if 200 <= status < 300:
        return Answer("delivered", status, response_body=excerpt)
    if status in RETRYABLE_STATUS or status >= 500:
        return Answer(
            "transient",
            status,
            error=f"HTTP {status}",
            retry_after=parse_retry_after(retry_after_header),
            response_body=excerpt,
        )
    why = "a redirect (redirects are not followed)" if 300 <= status < 400 else f"HTTP {status}"
    return Answer("permanent", status, error=why, response_body=excerpt)


def log_record(
    job: dict[str, Any],
    answer: Answer,
    outcome: Outcome,
    *,
    url: str,
    now_ms: int,
    next_attempt_at: int | None = None,
) -> dict[str, Any]:
    """The WebhookDeliveryAttempt for the delivery log."""
    error = answer.error
    if outcome == "failed" and answer.verdict == "transient":
        error = f"{error}; giving up after {job['attempt']} attempts"
    return {
        "attempt_id": f"{job['delivery_id']}:{job['attempt']}",
        "delivery_id": job["delivery_id"],
        "subscription_id": job["subscription_id"],
        "tenant_id": job["tenant_id"],
        "event_type": job["event_type"],
        "event_id": job["event_id"],
        "notification_id": job["notification_id"],
        "attempt": job["attempt"],
        "outcome": outcome,
        "http_status": answer.http_status,
        "error": error[:2000] if error else None,
        "response_body": answer.response_body,
        "duration_ms": answer.duration_ms,
        "url": url,
        "next_attempt_at": next_attempt_at,
        "occurred_at": now_ms,
    }
