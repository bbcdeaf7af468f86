"""NotificationRequest records as an upstream service would publish them, for integration tests."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from core.ids import notification_id
from tests.support.pipeline import Pipeline

GREETING = {"subject": "Hello {{ name }}", "text": "Hi {{ name }}", "html": None}


def request_record(
    user: str,
    *,
    tenant: str = "acme",
    content: dict[str, Any] | None = GREETING,
    data: dict[str, Any] | None = None,
    recipient: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One email request to `user` (email `<user>@example.test`); `fields` override the rest."""
    return {
        "request_id": str(uuid.uuid4()),
        "tenant_id": tenant,
        "idempotency_key": None,
        "batch_id": None,
        "occurred_at": int(time.time() * 1000),
        "channels": ["email"],
        "recipients": [
            {
                "user_id": user,
                "email": f"{user}@example.test",
                "phone": None,
                "locale": None,
                "timezone": None,
                **(recipient or {}),
            }
        ],
        "template_id": None,
        "content": content,
        "data_json": json.dumps({"name": user} if data is None else data),
        "priority": "normal",
        "metadata": {},
        **fields,
    }


def produce_request(pipeline: Pipeline, record: dict[str, Any], channel: str = "email") -> str:
    """Produce to notifications.requests keyed by the first recipient; that recipient's id."""
    user = record["recipients"][0]["user_id"]
    pipeline.produce_record("notifications.requests", f"{record['tenant_id']}:{user}", record)
    return notification_id(record["tenant_id"], record["request_id"], user, channel)
