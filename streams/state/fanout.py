"""A request's notifications: one per distinct recipient x channel, with derived ids.

Pure (no tables, no agents), so the batch stage can count a chunk's notifications without
importing the request stage and its tables.
"""

from __future__ import annotations

from typing import Any

from core.ids import notification_id
from core.lanes import Lane


def fan_out(
    request: dict[str, Any], request_id: str, lane: Lane = "transactional"
) -> list[dict[str, Any]]:
    """One in-flight Notification per distinct recipient x channel, with derived ids."""
    seen: set[tuple[str, str]] = set()
    notifications = []
    for recipient in request["recipients"]:
        for channel in request["channels"]:
            if not recipient["user_id"] or (recipient["user_id"], channel) in seen:
                continue
            seen.add((recipient["user_id"], channel))
            notifications.append(
                {
                    "notification_id": notification_id(
                        request["tenant_id"], request_id, recipient["user_id"], channel
                    ),
                    "request_id": request_id,
                    "tenant_id": request["tenant_id"],
                    "batch_id": request.get("batch_id"),
                    "occurred_at": request["occurred_at"],
                    "channel": channel,
                    "recipient": recipient,
                    "template_id": request.get("template_id"),
                    "content": request.get("content"),
                    "data_json": request["data_json"],
                    "priority": request.get("priority", "normal"),
                    "metadata": request.get("metadata") or {},
                    "category": request.get("category"),
                    "template_version": request.get("template_version"),
                    "send_at": request.get("send_at"),
                    "lane": lane,
                    "provider_overrides": request.get("provider_overrides") or {},
                    "fallback_channels": request.get("fallback_channels") or [],
                }
            )
    return notifications
