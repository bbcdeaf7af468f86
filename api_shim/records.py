"""From an accepted HTTP body to the NotificationRequest record, and the ids it will yield."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from api_shim.errors import InvalidField
from api_shim.models import NotificationCreate, NotificationRef
from core.ids import notification_id
from streams.delivery.providers import foreign_override

_REQUEST_IDS = uuid.UUID("0b7e7d8e-3c55-4d1e-9f7a-51a3a4c1e2f0")


def request_id_for(tenant_id: str, idempotency_key: str | None) -> str:
    """Random, or derived from the idempotency key: a retried request gets the same ids even
    when it reaches another shim process first."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_REQUEST_IDS, f"{tenant_id}:{idempotency_key}"))


def check_providers(body: NotificationCreate, tenant_id: str, field: str = "providers") -> None:
    """422 for an override naming another tenant's provider (the tenant is the caller's, so
    the model alone cannot judge). The worker ignores such an override too."""
    for channel, provider_id in body.providers.items():
        if foreign_override(provider_id, tenant_id):
            raise InvalidField(
                f"{field}.{channel.value}",
                f"{provider_id!r} is not one of this tenant's providers; name your own "
                f"('<name>' or '{tenant_id}:<name>'), a platform one ('*:<name>') or an "
                "environment one ('env:<name>')",
            )


def request_record(
    body: NotificationCreate, *, tenant_id: str, idempotency_key: str | None
) -> dict[str, Any]:
    """A NotificationRequest record (schemas/notification_request.avsc) as the codec takes it;
    InvalidField for a provider override the tenant may not use."""
    check_providers(body, tenant_id)
    idempotency_key = idempotency_key or body.idempotency_key
    return {
        "request_id": request_id_for(tenant_id, idempotency_key),
        "tenant_id": tenant_id,
        "idempotency_key": idempotency_key,
        "batch_id": body.batch_id,
        "occurred_at": int(time.time() * 1000),
        "channels": [channel.value for channel in body.channels],
        "recipients": [recipient.model_dump() for recipient in body.recipients],
        "template_id": body.template_id,
        "content": body.content.model_dump() if body.content else None,
        "data_json": json.dumps(body.data, separators=(",", ":")),
        "priority": body.priority.value,
        "metadata": dict(body.metadata),
        "provider_overrides": {channel.value: pid for channel, pid in body.providers.items()},
        "fallback_channels": [channel.value for channel in body.fallback_channels],
        "category": body.category,
        "template_version": body.template_version,
        "send_at": int(body.send_at.timestamp() * 1000) if body.send_at else None,
    }


def notification_refs(
    tenant_id: str, request_id: str, body: NotificationCreate
) -> list[NotificationRef]:
    """The notification ids the request stage will derive: one per recipient x channel."""
    return [
        NotificationRef(
            notification_id=notification_id(
                tenant_id, request_id, recipient.user_id, channel.value
            ),
            user_id=recipient.user_id,
            channel=channel,
        )
        for recipient in body.recipients
        for channel in body.channels
    ]
