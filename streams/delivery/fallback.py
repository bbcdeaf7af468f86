"""Channel fallback: when a channel fails for good, try the next one the request allows.

The fallback is a new notification (id `<original>~<channel>`, derived, so a replay makes
the same one) sent back to enrich, which resolves the recipient's address for the new
channel, checks preferences again, and renders it. It is not a batch member: the batch
counts the original, which ends `failed` with a reason naming the fallback.
"""

from __future__ import annotations

from typing import Any

from core.ids import recipient_key
from core.lanes import lane_of, lane_topic
from streams.runtime.app import topics
from streams.runtime.events import emit_status


def fallback_notification(notification: dict[str, Any]) -> dict[str, Any] | None:
    remaining = [
        c for c in notification.get("fallback_channels") or [] if c != notification["channel"]
    ]
    if not remaining:
        return None
    channel, rest = remaining[0], remaining[1:]
    nid = notification["notification_id"]
    return {
        **notification,
        "notification_id": f"{nid}~{channel}",
        "channel": channel,
        "fallback_channels": rest,
        "batch_id": None,
        "address": None,
        "profile_source": None,
        "rendered": None,
        "attempt": 0,
        "not_before": None,
        "delivery_log": [],
        "metadata": {**(notification.get("metadata") or {}), "fallback_from": nid},
    }


async def fall_back(
    notification: dict[str, Any], reason: str, headers: dict[str, bytes]
) -> str | None:
    """Send the fallback notification to enrich; return its id, or None if there is none."""
    fallback = fallback_notification(notification)
    if fallback is None:
        return None
    await emit_status(
        fallback,
        "accepted",
        stage="deliver",
        headers=headers,
        reason=f"fallback for {notification['notification_id']}, whose "
        f"{notification['channel']} delivery failed: {reason}"[:1000],
    )
    key = recipient_key(fallback["tenant_id"], fallback["recipient"]["user_id"])
    target = lane_topic("notifications.accepted", lane_of(fallback))
    await topics.sink(target).send(key=key, value=fallback, headers=headers)
    return str(fallback["notification_id"])
