"""Generic outgoing webhook: a signed JSON POST to the subscriber's URL.

The body is signed with HMAC-SHA256 over f"{timestamp}.{body}" so a receiver can check that it
came from us and is fresh; `sign` and `verify` are the documented recipe (docs/connectors/
webhook.md). The target URL comes from tenants, so before sending we refuse schemes other than
http(s) and hosts that resolve to private, loopback, link-local, reserved or multicast
addresses (unless `allow_private_targets`): otherwise a webhook could reach our own network.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.errors import PermanentDeliveryError, RetryableDeliveryError
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
    # Only for trusted, internal receivers (and tests against a local peer).
    allow_private_targets: bool = False
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
        await check_target(target, allow_private=self.config.allow_private_targets)
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
        raise_for_status(response, what="from the webhook receiver")
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


async def check_target(url: str, *, allow_private: bool = False) -> None:
    """Refuse (permanently) a URL that is not http(s) or whose host is not a public address.

    `allow_private` skips the address check only; the scheme is always checked.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise PermanentDeliveryError("webhook URL is not a valid URL") from exc
    if parsed.scheme not in ("http", "https"):
        raise PermanentDeliveryError(f"webhook URL scheme {parsed.scheme!r} is not http(s)")
    host = parsed.host
    if not host:
        raise PermanentDeliveryError("webhook URL has no host")
    if allow_private:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        # Often a DNS hiccup; a name that never resolves is bounded by the retry path.
        raise RetryableDeliveryError(f"webhook host {host} did not resolve: {exc}") from exc
    # Every address, not just the first: the client may connect to any of them.
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if not _public(address):
            raise PermanentDeliveryError(
                f"webhook host {host} resolves to non-public address {address}"
            )
    # The client resolves the name again when it connects, so a DNS answer that changes in
    # between (rebinding) is not covered here; see docs/connectors/webhook.md.


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        # ::ffff:a.b.c.d is judged as a.b.c.d (Python versions disagree otherwise).
        address = address.ipv4_mapped
    # is_global is false for private, loopback, link-local, reserved and unspecified addresses,
    # and for the other special-purpose ranges (CGNAT 100.64/10, ...); multicast needs its own
    # check.
    return address.is_global and not address.is_multicast


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
