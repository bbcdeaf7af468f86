"""What other stages call to hand a notification to the scheduler stage (streams.scheduler).

Both produce a DeferredCommand to notifications.deferred, keyed like the notification
(tenant_id:user_id), so the scheduler's tables sit in the recipient's partition.
"""

from __future__ import annotations

from typing import Any

from streams.app import topics
from streams.events import emit_status, now_ms
from streams.ids import recipient_key


def _key(notification: dict[str, Any]) -> str:
    return recipient_key(notification["tenant_id"], notification["recipient"]["user_id"])


async def defer(
    notification: dict[str, Any],
    release_at: int,
    *,
    reason: str,
    stage: str,
    headers: dict[str, bytes],
) -> None:
    """Hold the notification until `release_at` (epoch ms); it then re-enters enrich."""
    await topics.sink("notifications.deferred").send(
        key=_key(notification),
        value={
            "kind": "schedule",
            "notification": notification,
            "release_at": release_at,
            "reason": reason,
            "digest_key": None,
            "digest_rule": None,
            "issued_at": now_ms(),
        },
        headers=headers,
    )
    await emit_status(
        notification,
        "deferred",
        stage=stage,
        headers=headers,
        reason=reason,
        deferred_until=release_at,
    )


async def collect_into_digest(
    notification: dict[str, Any],
    rule: dict[str, Any],
    digest_key: str,
    *,
    stage: str,
    headers: dict[str, bytes],
) -> None:
    """Add the notification to its open digest window (the scheduler opens one if needed)."""
    await topics.sink("notifications.deferred").send(
        key=_key(notification),
        value={
            "kind": "digest",
            "notification": notification,
            "release_at": 0,
            "reason": None,
            "digest_key": digest_key,
            "digest_rule": rule,
            "issued_at": now_ms(),
        },
        headers=headers,
    )
