"""Email through Mailgun's Messages API; receipts from Mailgun webhooks.

Answers map as connectors.http says, with Mailgun's `message` as the reason and these
refinements:

    400 "to parameter is not a valid address"     InvalidAddressError (the recipient)
    400 "from parameter is not a valid address"   ProviderRejectedError (our sender setting)
    404 (unknown sending domain)                  ProviderRejectedError (our domain setting)

See docs/connectors/mailgun.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import Field, SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.errors import DeliveryError, InvalidAddressError, ProviderRejectedError
from connectors.http import HttpConnector, HttpProviderConfig, excerpt, raise_for_status
from connectors.receipts import Receipt, ReceiptStatus

log = logging.getLogger(__name__)

NAME = "mailgun"
_INVALID_PARAMETER = re.compile(r"^\W*(to|from)\W+parameter is not a valid address", re.I)
# Permanent failures that are suppressions for policy, not a verdict on the address.
_POLICY_SUPPRESSIONS = frozenset({"suppress-unsubscribe", "suppress-complaint"})


class MailgunConfig(HttpProviderConfig):
    # Domains in Mailgun's EU region use https://api.eu.mailgun.net.
    base_url: str = "https://api.mailgun.net"
    api_key: SecretStr
    # The sending domain, as registered in Mailgun (a path segment, so no slashes).
    domain: str = Field(pattern=r"^[A-Za-z0-9.-]+$")
    # "notify@mg.acme.com" or "Acme <notify@mg.acme.com>".
    sender: str
    # For `verify_signature` on incoming webhooks; not used to send.
    webhook_signing_key: SecretStr | None = None


class MailgunConnector(HttpConnector[MailgunConfig]):
    channel = "email"
    name = NAME
    config_model = MailgunConfig
    # Mailgun publishes no default per-second rate; limits depend on the account.
    rate_per_sec = None
    # The Messages API takes no idempotency key: a retried request is a second email.
    honours_idempotency_key = False

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        response = await self.request(
            "POST",
            self.url(f"/v3/{self.config.domain}/messages"),
            data=self._form(message),
            auth=("api", self.config.api_key.get_secret_value()),
        )
        if not response.is_success:
            _raise_for(response)
        return DeliveryResult(
            outcome="sent", provider=self.name, provider_message_id=_message_id(response)
        )

    def _form(self, message: OutboundMessage) -> dict[str, str]:
        form = {
            "from": self.config.sender,
            "to": message.to,
            "subject": message.subject or "",
            "text": message.text,
            # Custom variables come back as `user-variables` in every webhook event.
            "v:notification_id": message.notification_id,
            "v:tenant_id": message.tenant_id,
        }
        if message.html:
            form["html"] = message.html
        # No h:Message-Id: Mailgun generates the Message-Id it returns and reports in events,
        # and it does not deduplicate on ours, so setting one would buy nothing here.
        return form


def _message_id(response: httpx.Response) -> str | None:
    try:
        value = response.json().get("id")
    except (ValueError, AttributeError):
        return None
    # The send answer has "<id>"; webhook events carry the bare id. Store the bare form so
    # the two match.
    return str(value).strip("<>") if value else None


def _raise_for(response: httpx.Response) -> None:
    detail = _error_message(response)
    reason = f"HTTP {response.status_code}: {detail}"
    invalid = _INVALID_PARAMETER.match(detail) if response.status_code == 400 else None
    if invalid and invalid.group(1).lower() == "to":
        raise InvalidAddressError(reason)
    if invalid or response.status_code == 404:
        raise ProviderRejectedError(reason)
    try:
        raise_for_status(response)
    except DeliveryError as exc:
        # The shared status mapping, with Mailgun's own words as the reason.
        raise type(exc)(reason, retry_after=exc.retry_after) from None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return excerpt(response)
    message = body.get("message") if isinstance(body, dict) else None
    return str(message) if message else excerpt(response)


def verify_signature(
    signing_key: str | SecretStr, timestamp: str, token: str, signature: str
) -> bool:
    """Whether a webhook's `signature` block is Mailgun's: HMAC-SHA256(key, timestamp + token).

    Replay protection (a fresh timestamp, tokens not seen before) is the caller's.
    """
    key = signing_key.get_secret_value() if isinstance(signing_key, SecretStr) else signing_key
    expected = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


# Mailgun retries a webhook for 8 hours; whether a retry is signed anew is not documented,
# so a timestamp this old is still accepted. Replays inside the window are harmless: receipts
# are deduplicated on the event id for far longer (DELIVERED_TTL_SECONDS).
WEBHOOK_TOLERANCE_SECONDS = 9 * 3600


def verify_webhook(
    signing_key: str | SecretStr,
    signature: Mapping[str, Any],
    *,
    tolerance_seconds: float = WEBHOOK_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a webhook's `signature` block ({"timestamp", "token", "signature"}) is
    Mailgun's and not stale: `verify_signature`, and a timestamp within `tolerance_seconds`.
    """
    timestamp, token, digest = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if not all(isinstance(value, str) and value for value in (timestamp, token, digest)):
        return False
    assert isinstance(timestamp, str) and isinstance(token, str) and isinstance(digest, str)
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_seconds:
        return False
    return verify_signature(signing_key, timestamp, token, digest)


def parse_receipts(payload: dict[str, Any]) -> list[Receipt]:
    """Receipts from one webhook POST: {"signature": {...}, "event-data": {...}}.

    delivered -> delivered. failed with severity "permanent" -> bounced, except suppressions
    for unsubscribes and complaints -> failed (the address is fine). failed with severity
    "temporary" is skipped: Mailgun keeps retrying and reports the final outcome later (a
    `failed` receipt is final and would hide it). rejected (Mailgun refused to send) ->
    failed. Opens, clicks and the rest are skipped.
    """
    event = payload.get("event-data", payload)
    try:
        receipt = _receipt(event)
    except (AttributeError, KeyError, TypeError, ValueError):
        log.warning("skipping a malformed Mailgun event: %.200r", event)
        return []
    return [receipt] if receipt is not None else []


def _receipt(event: dict[str, Any]) -> Receipt | None:
    mapped = _status(event)
    if mapped is None:
        return None
    status, reason = mapped
    headers = (event.get("message") or {}).get("headers") or {}
    # An empty `user-variables` arrives as [] rather than {}.
    variables = event.get("user-variables") or {}
    return Receipt(
        provider=NAME,
        # Stable across Mailgun's redeliveries of the event (signature.token is not).
        provider_event_id=str(event["id"]),
        status=status,
        provider_message_id=_optional_str(headers.get("message-id")),
        notification_id=_optional_str(variables.get("notification_id")),
        tenant_id=_optional_str(variables.get("tenant_id")),
        reason=reason,
        occurred_at=int(float(event["timestamp"]) * 1000),
    )


def _status(event: dict[str, Any]) -> tuple[ReceiptStatus, str | None] | None:
    kind = event.get("event")
    if kind == "delivered":
        return "delivered", None
    if kind == "rejected":
        reject = event.get("reject") or {}
        return "failed", _optional_str(reject.get("reason")) or "rejected by Mailgun"
    if kind != "failed" or event.get("severity") != "permanent":
        return None
    why = str(event.get("reason") or "")
    status: ReceiptStatus = "failed" if why in _POLICY_SUPPRESSIONS else "bounced"
    return status, _failure_reason(why, event.get("delivery-status") or {})


def _failure_reason(why: str, delivery: dict[str, Any]) -> str:
    code = delivery.get("code")
    text = delivery.get("description") or delivery.get("message") or ""
    detail = " ".join(str(part) for part in (code, text) if part)
    return ": ".join(part for part in (why, detail) if part) or "failed"


def _optional_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
