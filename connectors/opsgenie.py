"""Alerts through the Opsgenie Alert API: `POST /v2/alerts` with a GenieKey.

Opsgenie answers 202 with a requestId and creates the alert asynchronously. Our idempotency
key is the alert's `alias`: while an alert with that alias is open, Opsgenie adds to its count
instead of opening another, so a retry does not page twice. See docs/connectors/opsgenie.md.
"""

from __future__ import annotations

import hashlib
import json
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

EU_BASE_URL = "https://api.eu.opsgenie.com"
MESSAGE_MAX = 130
DESCRIPTION_MAX = 15_000
ALIAS_MAX = 512
TAGS_MAX = 20
PRIORITY = {"critical": "P1", "high": "P2", "normal": "P3", "low": "P4"}


class OpsgenieConfig(HttpProviderConfig):
    # EU accounts use EU_BASE_URL.
    base_url: str = "https://api.opsgenie.com"
    # The key of an API integration (account-level keys cannot create alerts).
    api_key: SecretStr


class OpsgenieConnector(HttpConnector[OpsgenieConfig]):
    channel = "alert"
    name = "opsgenie"
    config_model = OpsgenieConfig
    # Opsgenie's limits depend on the plan and are not published as one number.
    rate_per_sec = None
    max_body_len = DESCRIPTION_MAX
    # Opsgenie deduplicates open alerts on alias.
    honours_idempotency_key = True

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        response = await self.request(
            "POST",
            self.url("v2/alerts"),
            json=build_alert(message),
            headers={"Authorization": f"GenieKey {self.config.api_key.get_secret_value()}"},
        )
        if response.status_code == 402:
            # The key is valid but the account's plan does not allow this: ours to fix.
            raise ProviderRejectedError(f"HTTP 402 from Opsgenie: {excerpt(response)}")
        raise_for_status(response, what="from Opsgenie")
        request_id = json_object(response).get("requestId")
        return DeliveryResult(
            outcome="sent",
            provider=self.name,
            provider_message_id=request_id if isinstance(request_id, str) else None,
        )


def build_alert(message: OutboundMessage) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "message": _clip(message.subject or message.text, MESSAGE_MAX),
        "description": message.text,
        "alias": alias(message.idempotency_key),
        "priority": PRIORITY[message.priority],
        "details": _details(message),
    }
    tags = message.data.get("tags")
    if isinstance(tags, list):
        alert["tags"] = [tag for tag in tags if isinstance(tag, str)][:TAGS_MAX]
    return alert


def alias(idempotency_key: str) -> str:
    """The idempotency key, hashed when longer than Opsgenie accepts (stable across retries)."""
    if len(idempotency_key) <= ALIAS_MAX:
        return idempotency_key
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def _details(message: OutboundMessage) -> dict[str, str]:
    """Opsgenie's details are a map of strings: other JSON values are sent JSON-encoded."""
    details = {
        key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in message.data.items()
        if key != "tags"
    }
    details["notification_id"] = message.notification_id
    details["tenant_id"] = message.tenant_id
    return details


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
