"""Generic outgoing webhook: a signed JSON POST to the subscriber's URL.

The body is signed with HMAC-SHA256 over f"{timestamp}.{body}" so a receiver can check that it
came from us and is fresh; `sign` and `verify` are the documented recipe (docs/connectors/
webhook.md). The target URL comes from tenants, so we refuse schemes other than http(s), and
the guarded client (connectors/egress.py) refuses hosts that resolve to private, loopback,
link-local, reserved or multicast addresses and connects to the address it checked (unless
the operator allowed private targets): otherwise a webhook could reach our own network. A
failure's reason carries the status code, never the receiver's body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.egress import Egress, check_url, http_url
from connectors.http import HttpConnector, HttpProviderConfig, raise_for_status
from connectors.receipts import Receipt, ReceiptStatus

SIGNATURE_VERSION = "v1"


class WebhookConfig(HttpProviderConfig):
    # Not used: a webhook has no API root; the target is `url` or the message's address.
    base_url: str = ""
    secret: SecretStr
    # When set, every message goes here instead of to its own address (`message.to`).
    url: str | None = None
    # Sent with every request (e.g. a receiver's own auth header); ours take precedence.
    headers: dict[str, SecretStr] = {}
    # Signs receipts the receiver reports back (the generic inbound webhook, same recipe as
    # `sign`); its own secret, so a leaked outgoing secret cannot forge receipts.
    inbound_secret: SecretStr | None = None


class WebhookConnector(HttpConnector[WebhookConfig]):
    channel = "webhook"
    name = "webhook"
    config_model = WebhookConfig
    rate_per_sec = None
    # We send Idempotency-Key and ask receivers to deduplicate on it; we cannot make them.
    honours_idempotency_key = True

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        target = self.config.url or message.to
        # Scheme and host here; the address is checked by the guarded client as it connects.
        http_url(target, what="webhook URL")
        timestamp = int(time.time())
        body = _body(message, timestamp)
        headers = {name: value.get_secret_value() for name, value in self.config.headers.items()}
        headers.update(
            {
                "Content-Type": "application/json",
                "Idempotency-Key": message.idempotency_key,
                "X-Notification-Id": message.notification_id,
                "X-Notification-Timestamp": str(timestamp),
                "X-Notification-Signature": sign(
                    self.config.secret.get_secret_value(), timestamp, body
                ),
            }
        )
        # Never follow a redirect: it could point somewhere check_target would refuse.
        response = await self.request(
            "POST", target, content=body, headers=headers, follow_redirects=False
        )
        # No body in the reason: it is tenant-readable, and the target is the tenant's choice.
        raise_for_status(response, what="from the webhook receiver", body=False)
        # A 2xx means the receiver has it: there is no further hop to report on.
        return DeliveryResult(outcome="delivered", provider=self.name)


def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    """The X-Notification-Signature value: v1=<hex HMAC-SHA256 of f"{timestamp}.{body}">."""
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


def verify(
    secret: str,
    header: str,
    timestamp: int | str,
    body: bytes | str,
    tolerance_seconds: int = 300,
    *,
    now: float | None = None,
) -> bool:
    """Whether `header` signs this timestamp and body and the timestamp is fresh.

    The header may list several comma-separated signatures (while a secret is rotated); one
    match is enough. Comparison is constant-time.
    """
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_seconds:
        return False
    expected = sign(secret, sent, body).encode()
    # Bytes, because compare_digest refuses non-ASCII str (a hostile header would raise).
    candidates = [part.strip().encode() for part in header.split(",")]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


async def check_target(
    url: str, *, allow_private: bool = False, egress: Egress | None = None
) -> None:
    """Refuse (permanently) a URL that is not http(s) or whose host is not a public address.

    For validating a URL when it is configured; sending is guarded again at connect time
    (connectors/egress.py). `allow_private` skips the address check only, never the scheme's.
    """
    await check_url(url, egress or Egress(allow_private=allow_private), what="webhook URL")


def _body(message: OutboundMessage, timestamp: int) -> bytes:
    payload = {
        "notification_id": message.notification_id,
        "tenant_id": message.tenant_id,
        "channel": message.channel,
        "subject": message.subject,
        "text": message.text,
        "html": message.html,
        "data": message.data,
        "attempt": message.attempt,
        "sent_at": datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z"),
    }
    # Compact and UTF-8: the receiver verifies the signature over these exact bytes.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


# Headers of a signed request, both ways: ours to receivers and receipts reported back.
SIGNATURE_HEADER = "X-Notification-Signature"
TIMESTAMP_HEADER = "X-Notification-Timestamp"


class InboundEvent(BaseModel):
    """One delivery report in the generic inbound webhook's body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    notification_id: str = Field(min_length=1, max_length=200)
    status: ReceiptStatus
    # Unique per event on the reporting side: a redelivered report is applied once.
    provider_event_id: str = Field(min_length=1, max_length=200)
    occurred_at: int = Field(ge=0, description="Epoch ms")
    reason: str | None = Field(None, max_length=1000)
    provider_message_id: str | None = Field(None, max_length=200)


class InboundEvents(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[InboundEvent] = Field(min_length=1, max_length=1000)


def parse_receipts(payload: Any, *, provider: str = "webhook") -> list[Receipt]:
    """Receipts from the generic inbound webhook's JSON body (`InboundEvents`); raises
    pydantic's ValidationError naming the field when the body does not fit."""
    body = InboundEvents.model_validate(payload)
    return [
        Receipt(
            provider=provider,
            provider_event_id=event.provider_event_id,
            status=event.status,
            provider_message_id=event.provider_message_id,
            notification_id=event.notification_id,
            reason=event.reason,
            occurred_at=event.occurred_at,
        )
        for event in body.events
    ]
