"""Email through SendGrid's v3 Mail Send API; receipts from SendGrid's Event Webhook.

Answers map as connectors.http says, with SendGrid's `errors[].message` as the reason and
these refinements:

    400 on personalizations.N.to.N.email   InvalidAddressError (the recipient)
    400 on from / from.email               ProviderRejectedError (our sender configuration)
    429 without Retry-After                retry_after from X-RateLimit-Reset (epoch seconds)

See docs/connectors/sendgrid.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from email.utils import parseaddr
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr, field_validator

from connectors.base import DeliveryResult, OutboundMessage
from connectors.errors import (
    DeliveryError,
    InvalidAddressError,
    ProviderRejectedError,
    RetryableDeliveryError,
)
from connectors.http import HttpConnector, HttpProviderConfig, excerpt, raise_for_status
from connectors.receipts import Receipt, ReceiptStatus

log = logging.getLogger(__name__)

NAME = "sendgrid"
_RECIPIENT_FIELD = re.compile(r"^personalizations\.\d+\.to\.\d+\.email$")
# Drop reasons that mean the address itself is bad, as opposed to unsubscribes, spam reports
# or content drops, where the address is fine.
_ADDRESS_DROPS = frozenset({"bounced address", "invalid"})


class SendGridConfig(HttpProviderConfig):
    # EU regional subusers use https://api.eu.sendgrid.com.
    base_url: str = "https://api.sendgrid.com"
    api_key: SecretStr
    # "notify@acme.com" or "Acme <notify@acme.com>"; a verified SendGrid sender identity.
    sender: str
    # The Signed Event Webhook's verification key (base64 DER, as SendGrid's console shows
    # it, or PEM), for `verify_event_webhook`; not used to send. Public, so a setting.
    webhook_public_key: str | None = None

    @field_validator("webhook_public_key")
    @classmethod
    def _usable_key(cls, value: str | None) -> str | None:
        if value is not None:
            load_public_key(value)  # refused at configuration time, not at the first webhook
        return value


class SendGridConnector(HttpConnector[SendGridConfig]):
    channel = "email"
    name = NAME
    config_model = SendGridConfig
    # SendGrid publishes no per-second limit for Mail Send (plan quotas apply).
    rate_per_sec = None
    # Mail Send accepts no idempotency key: a retried request is a second email.
    honours_idempotency_key = False

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        response = await self.request(
            "POST",
            self.url("/v3/mail/send"),
            json=self._payload(message),
            headers={"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"},
        )
        if not response.is_success:
            _raise_for(response)
        # 202 Accepted; the id is the prefix of the sg_message_id its events carry.
        return DeliveryResult(
            outcome="sent",
            provider=self.name,
            provider_message_id=response.headers.get("X-Message-Id"),
        )

    def _payload(self, message: OutboundMessage) -> dict[str, Any]:
        name, address = parseaddr(self.config.sender)
        sender = {"email": address, "name": name} if name else {"email": address}
        # SendGrid requires text/plain before text/html.
        content = [{"type": "text/plain", "value": message.text}]
        if message.html:
            content.append({"type": "text/html", "value": message.html})
        return {
            "personalizations": [{"to": [{"email": message.to}]}],
            "from": sender,
            "subject": message.subject or "",
            "content": content,
            # Echoed at the top level of every Event Webhook event: receipts name their
            # notification without a lookup by message id.
            "custom_args": {
                "notification_id": message.notification_id,
                "tenant_id": message.tenant_id,
            },
        }


def _raise_for(response: httpx.Response) -> None:
    errors = _errors(response)
    detail = "; ".join(f"{msg} ({field})" if field else msg for msg, field in errors)
    reason = f"HTTP {response.status_code}: {detail or excerpt(response)}"
    fields = [field for _, field in errors]
    if response.status_code == 400:
        if any(_RECIPIENT_FIELD.match(field) for field in fields):
            raise InvalidAddressError(reason)
        if any(field == "from" or field.startswith("from.") for field in fields):
            raise ProviderRejectedError(reason)
    if response.status_code == 429 and "Retry-After" not in response.headers:
        raise RetryableDeliveryError(reason, retry_after=_until_reset(response))
    try:
        raise_for_status(response)
    except DeliveryError as exc:
        # The shared status mapping, with SendGrid's own words as the reason.
        raise type(exc)(reason, retry_after=exc.retry_after) from None


def _errors(response: httpx.Response) -> list[tuple[str, str]]:
    """(message, field) pairs from SendGrid's {"errors": [{"message", "field", "help"}]}."""
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [
        (str(error.get("message") or ""), str(error.get("field") or ""))
        for error in errors
        if isinstance(error, dict)
    ]


def _until_reset(response: httpx.Response) -> float | None:
    try:
        reset = float(response.headers["X-RateLimit-Reset"])
    except (KeyError, ValueError):
        return None
    return max(0.0, reset - time.time())


def parse_receipts(events: list[dict[str, Any]]) -> list[Receipt]:
    """Receipts from one Event Webhook POST (a JSON array of events).

    delivered -> delivered; bounce -> bounced, but bounce of type "blocked" (the receiving
    server refused this message, not the address) -> failed; dropped for a bounced or invalid
    address -> bounced, for any other reason -> failed. deferred is skipped: SendGrid is still
    retrying and its final event follows (a `failed` receipt is final and would hide it).
    processed, open, click and the rest say nothing about delivery and are skipped.
    """
    receipts = []
    for event in events:
        try:
            receipt = _receipt(event)
        except (AttributeError, KeyError, TypeError, ValueError):
            log.warning("skipping a malformed SendGrid event: %.200r", event)
            continue
        if receipt is not None:
            receipts.append(receipt)
    return receipts


def _receipt(event: dict[str, Any]) -> Receipt | None:
    mapped = _status(event)
    if mapped is None:
        return None
    status, reason = mapped
    message_id = event.get("sg_message_id")
    return Receipt(
        provider=NAME,
        provider_event_id=event.get("sg_event_id") or _derived_event_id(event),
        status=status,
        # sg_message_id is the X-Message-Id from the send plus ".filter…"-style routing
        # suffixes; the part before the first dot is what the DeliveryResult recorded.
        provider_message_id=str(message_id).split(".", 1)[0] if message_id else None,
        notification_id=_optional_str(event.get("notification_id")),
        tenant_id=_optional_str(event.get("tenant_id")),
        reason=reason,
        occurred_at=int(float(event["timestamp"]) * 1000),
    )


def _status(event: dict[str, Any]) -> tuple[ReceiptStatus, str | None] | None:
    kind = event.get("event")
    if kind == "delivered":
        return "delivered", None
    if kind == "bounce":
        reason = _optional_str(event.get("reason"))
        return ("failed" if event.get("type") == "blocked" else "bounced"), reason
    if kind == "dropped":
        reason = str(event.get("reason") or "dropped")
        return ("bounced" if reason.lower() in _ADDRESS_DROPS else "failed"), reason
    return None


def _derived_event_id(event: dict[str, Any]) -> str:
    # Old payloads can lack sg_event_id; a digest of the event is stable across SendGrid's
    # redeliveries of it, so deduplication still works.
    digest = hashlib.sha256(json.dumps(event, sort_keys=True).encode()).hexdigest()
    return f"sha256:{digest[:32]}"


def _optional_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


# Headers of the Signed Event Webhook.
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# SendGrid retries a POST for 24 hours; whether a retry is signed anew is not documented, so
# a timestamp this old is still accepted. Replays inside the window are harmless: receipts are
# deduplicated on sg_event_id for far longer (DELIVERED_TTL_SECONDS).
EVENT_WEBHOOK_TOLERANCE_SECONDS = 25 * 3600


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The Event Webhook verification key: a P-256 public key, base64 DER or PEM.

    ValueError names what is wrong (never the key itself, though it is public).
    """
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise ValueError("webhook_public_key is not a base64 DER or PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("webhook_public_key is not an ECDSA P-256 public key")
    return key


def verify_event_webhook(
    public_key: str | ec.EllipticCurvePublicKey,
    payload: bytes,
    signature: str,
    timestamp: str,
    *,
    tolerance_seconds: float = EVENT_WEBHOOK_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether an Event Webhook POST is SendGrid's and not stale.

    SendGrid signs `timestamp + raw body` with ECDSA P-256/SHA-256; `signature` is the
    base64 DER signature (X-Twilio-Email-Event-Webhook-Signature), `timestamp` the epoch
    seconds it signed (X-Twilio-Email-Event-Webhook-Timestamp), refused when further than
    `tolerance_seconds` from now: a captured request cannot be replayed once its events'
    ids are no longer remembered.
    """
    try:
        sent = int(timestamp)
        decoded = base64.b64decode(signature, validate=True)
    except (TypeError, ValueError, binascii.Error):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_seconds:
        return False
    key = load_public_key(public_key) if isinstance(public_key, str) else public_key
    try:
        key.verify(decoded, timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
