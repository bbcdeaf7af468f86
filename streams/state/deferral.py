"""What other stages call to hand a notification to the scheduler stage (streams.state.scheduler).

Both produce a DeferredCommand to notifications.deferred, keyed like the notification
(tenant_id:user_id), so the scheduler's tables sit in the recipient's partition.
"""

from __future__ import annotations

from typing import Any

from core.ids import recipient_key
from streams.runtime.app import topics
from streams.runtime.events import emit_status, now_ms


def _key(notification: dict[str, Any]) -> str:
    return recipient_key(notification["tenant_id"], notification["recipient"]["user_id"])


async def _send_command(
    notification: dict[str, Any],
    headers: dict[str, bytes],
    *,
    kind: str,
    release_at: int = 0,
    reason: str | None = None,
    digest_key: str | None = None,
    digest_rule: dict[str, Any] | None = None,
) -> None:
    """A DeferredCommand, keyed by recipient so the scheduler on its partition owns it."""
    await topics.sink("notifications.deferred").send(
        key=_key(notification),
        value={
            "kind": kind,
            "notification": notification,
            "release_at": release_at,
            "reason": reason,
            "digest_key": digest_key,
            "digest_rule": digest_rule,
            "issued_at": now_ms(),
        },
        headers=headers,
    )


async def defer(
    notification: dict[str, Any],
    release_at: int,
    *,
    reason: str,
    stage: str,
    headers: dict[str, bytes],
) -> None:
    """Hold the notification until `release_at` (epoch ms); it then re-enters enrich."""
    await _send_command(
        notification, headers, kind="schedule", release_at=release_at, reason=reason
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
    await _send_command(
        notification, headers, kind="digest", digest_key=digest_key, digest_rule=rule
    )
