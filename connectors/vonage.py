"""SMS through the Vonage (Nexmo) SMS API: `POST https://rest.nexmo.com/sms/json`.

docs/connectors/vonage.md. Vonage answers HTTP 200 even for most errors, with a `status` per
message part (developer.vonage.com/api-errors/sms); those map as:

    0                         accepted; `message-id` of the first part is the provider id
    1, 5, 10                  throttled, internal error, too many binds   retriable
    4, 8, 9, 11, 14, 15, 23,  credentials, account barred, no credit,     ProviderRejectedError
    29, 32                    not enabled, signature, sender id not
                              allowed, callback URL, demo-mode whitelist
    6, 7, 33                  unroutable / barred / deactivated number    InvalidAddressError
    anything else (2, 3, 12…) missing or invalid parameters, too long     PermanentDeliveryError

Non-2xx HTTP answers, timeouts and connection errors map as in connectors.http. Delivery
receipts (DLRs) become Receipts through `parse_receipts`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.errors import (
    DeliveryError,
    InvalidAddressError,
    PermanentDeliveryError,
    ProviderRejectedError,
    RetryableDeliveryError,
)
from connectors.http import HttpConnector, HttpProviderConfig, excerpt, raise_for_status
from connectors.receipts import Receipt, ReceiptStatus

RETRYABLE_STATUSES = frozenset({"1", "5", "10"})
PROVIDER_REJECTED_STATUSES = frozenset({"4", "8", "9", "11", "14", "15", "23", "29", "32"})
INVALID_ADDRESS_STATUSES = frozenset({"6", "7", "33"})

CLIENT_REF_MAX = 40  # Vonage's limit on client-ref

# GSM 03.38 basic and extension tables: text outside them must be sent as type=unicode, or
# Vonage replaces the characters it cannot encode.
GSM_7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
    "\f^{}\\[~]|€"
)

# DLR status -> receipt status; accepted/buffered are progress, unknown says nothing.
RECEIPT_STATUS: dict[str, ReceiptStatus] = {
    "delivered": "delivered",
    "failed": "failed",
    "rejected": "failed",
    "expired": "failed",
}


class VonageConfig(HttpProviderConfig):
    base_url: str = "https://rest.nexmo.com"
    api_key: str
    api_secret: SecretStr
    # `from`: a Vonage number (E.164) or an alphanumeric sender id where the country allows.
    sender: str
    # Delivery receipt webhook; overrides the one set in the Vonage dashboard.
    callback: str | None = None


class VonageConnector(HttpConnector[VonageConfig]):
    channel = "sms"
    name = "vonage"
    config_model = VonageConfig
    rate_per_sec = 30.0  # API requests per second per API key, Vonage's default
    # Vonage splits long text into concatenated parts itself and documents no length limit
    # beyond status 12 (message too long), so the connector does not trim.
    max_body_len = None
    honours_idempotency_key = False

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        response = await self.request("POST", self.url("/sms/json"), data=self.form(message))
        raise_for_status(response)
        try:
            parts = [dict(part) for part in response.json()["messages"]]
        except (ValueError, KeyError, TypeError) as exc:
            # Accepted or not is unknown; retrying risks a duplicate, not retrying a loss.
            raise RetryableDeliveryError(f"unreadable answer: {excerpt(response)}") from exc
        if not parts:
            raise RetryableDeliveryError(f"answer without messages: {excerpt(response)}")
        for part in parts:
            status = str(part.get("status"))
            if status != "0":
                raise vonage_error(status, str(part.get("error-text", "")))
        return DeliveryResult(
            outcome="sent", provider=self.name, provider_message_id=parts[0].get("message-id")
        )

    def form(self, message: OutboundMessage) -> dict[str, str]:
        form = {
            "api_key": self.config.api_key,
            "api_secret": self.config.api_secret.get_secret_value(),
            "from": self.config.sender,
            "to": message.to.removeprefix("+"),  # Vonage wants E.164 digits, no plus
            "text": message.text,
        }
        if not set(message.text) <= GSM_7:
            form["type"] = "unicode"
        # A truncated id would name the wrong notification; receipts then match by message id.
        if len(message.notification_id) <= CLIENT_REF_MAX:
            form["client-ref"] = message.notification_id
        if self.config.callback:
            form["callback"] = self.config.callback
        return form


def vonage_error(status: str, text: str) -> DeliveryError:
    reason = f"Vonage status {status}: {text}".rstrip(": ")
    if status in RETRYABLE_STATUSES:
        return RetryableDeliveryError(reason)
    if status in PROVIDER_REJECTED_STATUSES:
        return ProviderRejectedError(reason)
    if status in INVALID_ADDRESS_STATUSES:
        return InvalidAddressError(reason)
    return PermanentDeliveryError(reason)


def parse_receipts(dlr: Mapping[str, str], *, now: float | None = None) -> list[Receipt]:
    """Receipts from one Vonage delivery receipt (its query parameters or JSON body).

    Long messages are sent as parts; each part gets its own DLR and message id.
    """
    status = RECEIPT_STATUS.get(str(dlr.get("status", "")).lower())
    message_id = dlr.get("messageId")
    if status is None or not message_id:
        return []
    error = str(dlr.get("err-code", "0"))
    return [
        Receipt(
            provider=VonageConnector.name,
            provider_event_id=f"{message_id}:{dlr['status']}",
            status=status,
            provider_message_id=message_id,
            notification_id=dlr.get("client-ref") or None,
            reason=f"{dlr['status']} (err-code {error})" if status == "failed" else None,
            occurred_at=_occurred_at(dlr, now),
        )
    ]


def _occurred_at(dlr: Mapping[str, str], now: float | None) -> int:
    """Epoch ms: the carrier's time (`scts`, YYMMDDHHMM), else when Vonage sent the DLR."""
    for field, layout in (("scts", "%y%m%d%H%M"), ("message-timestamp", "%Y-%m-%d %H:%M:%S")):
        try:
            when = datetime.strptime(str(dlr.get(field, "")), layout).replace(tzinfo=UTC)
        except ValueError:
            continue
        return int(when.timestamp() * 1000)
    return int((time.time() if now is None else now) * 1000)
