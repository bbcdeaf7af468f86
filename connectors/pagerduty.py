"""Alerts through the PagerDuty Events API v2: one `trigger` event per notification.

The routing key (an integration key) travels in the body, not in a header. PagerDuty answers
202 once it has queued the event; the alert itself is created asynchronously. Our idempotency
key is the event's `dedup_key`, so a retried trigger lands on the same open alert instead of
paging twice. See docs/connectors/pagerduty.md.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.errors import ProviderRejectedError
from connectors.http import (
    HttpConnector,
    HttpProviderConfig,
    excerpt,
    json_object,
    raise_for_status,
)

SUMMARY_MAX = 1024
DEDUP_KEY_MAX = 255
SEVERITY = {"critical": "critical", "high": "error", "normal": "warning", "low": "info"}


class PagerDutyConfig(HttpProviderConfig):
    base_url: str = "https://events.pagerduty.com"
    routing_key: SecretStr
    # `payload.source` is required: the system the alert is about. data["source"] overrides it.
    source: str = "notifications"


class PagerDutyConnector(HttpConnector[PagerDutyConfig]):
    channel = "alert"
    name = "pagerduty"
    config_model = PagerDutyConfig
    # Events API v2: about 120 events per minute per integration key.
    rate_per_sec = 2.0
    # PagerDuty deduplicates trigger events on dedup_key while the alert is open.
    honours_idempotency_key = True

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        event = build_event(message, self.config)
        response = await self.request("POST", self.url("v2/enqueue"), json=event)
        if response.status_code == 400 and "routing" in response.text.lower():
            # PagerDuty rejects an unknown or malformed integration key as an invalid event;
            # it is our configuration, not the message, so another provider may succeed.
            raise ProviderRejectedError(f"HTTP 400 routing key rejected: {excerpt(response)}")
        raise_for_status(response, what="from PagerDuty")
        answer = json_object(response)
        dedup_key = answer.get("dedup_key")
        return DeliveryResult(
            outcome="sent",
            provider=self.name,
            provider_message_id=dedup_key if isinstance(dedup_key, str) else event["dedup_key"],
        )


def build_event(message: OutboundMessage, config: PagerDutyConfig) -> dict[str, Any]:
    data = message.data
    summary_from_subject = bool(message.subject)
    payload: dict[str, Any] = {
        "summary": _clip(message.subject or message.text, SUMMARY_MAX),
        "source": _str(data.get("source")) or config.source,
        "severity": SEVERITY[message.priority],
        "custom_details": _custom_details(message, include_text=summary_from_subject),
    }
    for key in ("component", "group"):
        if value := _str(data.get(key)):
            payload[key] = value
    if message.category:
        payload["class"] = message.category
    return {
        "routing_key": config.routing_key.get_secret_value(),
        "event_action": "trigger",
        "dedup_key": dedup_key(message.idempotency_key),
        "payload": payload,
    }


def dedup_key(idempotency_key: str) -> str:
    """The idempotency key, hashed when longer than PagerDuty accepts (stable across retries)."""
    if len(idempotency_key) <= DEDUP_KEY_MAX:
        return idempotency_key
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def _custom_details(message: OutboundMessage, *, include_text: bool) -> dict[str, Any]:
    details = dict(message.data)
    details["notification_id"] = message.notification_id
    details["tenant_id"] = message.tenant_id
    if include_text:
        # The summary is the subject; keep the body where responders can read it.
        details["text"] = message.text
    return details


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
