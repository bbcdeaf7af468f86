"""Digest windows, as pure functions: when a window flushes and what its notification says.

The scheduler stage (streams.state.scheduler) owns the state; everything it decides about a
window is here so it can be tested without a broker. Times are epoch milliseconds.
"""

from __future__ import annotations

import json
from typing import Any

from core.ids import digest_id

__all__ = [
    "digest_id",
    "digest_notification",
    "is_full",
    "planned_flush",
    "rule_problem",
    "window_key",
]


def window_key(notification: dict[str, Any], digest_key: str) -> str:
    """The digests-table key of the open window collecting this notification.

    One window per tenant + user + channel + digest key: items meant for different
    channels are never merged into one message.
    """
    user_id = notification["recipient"]["user_id"]
    return f"w|{notification['tenant_id']}:{user_id}|{notification['channel']}|{digest_key}"


def rule_problem(rule: dict[str, Any] | None) -> str | None:
    """Why a digest rule cannot be applied, or None when it can."""
    if rule is None:
        return "digest_rule: required for a digest command"
    if not rule.get("template_id"):
        return "digest_rule.template_id: the template that renders the digest is required"
    if rule["window_seconds"] <= 0:
        return "digest_rule.window_seconds: must be positive (max_items may flush earlier)"
    if rule["max_items"] < 0:
        return "digest_rule.max_items: must not be negative (0: no limit)"
    if rule["mode"] == "inactivity" and rule["max_window_seconds"] <= 0:
        return "digest_rule.max_window_seconds: must be positive in inactivity mode"
    return None


def planned_flush(rule: dict[str, Any], first_at: int, last_at: int) -> int:
    """When a window flushes if it does not fill up first.

    fixed: `window_seconds` after the first item. inactivity: `window_seconds` after the
    latest item, but never later than `max_window_seconds` after the first.
    """
    window_ms = int(rule["window_seconds"]) * 1000
    if rule["mode"] == "inactivity":
        return min(last_at + window_ms, first_at + int(rule["max_window_seconds"]) * 1000)
    return first_at + window_ms


def is_full(rule: dict[str, Any], count: int) -> bool:
    """max_items > 0: the window flushes as soon as it holds that many items."""
    return int(rule["max_items"]) > 0 and count >= int(rule["max_items"])


def digest_notification(
    header: dict[str, Any], items: list[dict[str, Any]], now: int
) -> dict[str, Any]:
    """The one notification a flushed window becomes.

    Its id is the window's digest id (derived, so a replayed flush produces the same
    notification and the deliver stage's dedup table stops a second send); `digest_id`
    is set so the enrich stage never collects it into a digest again. The template gets
    `items` (each item's data, in arrival order), `count` and `digest_key`.
    """
    if not items:
        raise ValueError(f"digest {header['digest_id']}: a window with no items")
    first = items[0]
    data = {
        "items": [_data(item) for item in items],
        "count": len(items),
        "digest_key": header["digest_key"],
    }
    rule = header["rule"]
    return {
        "notification_id": header["digest_id"],
        "request_id": header["digest_id"],
        "tenant_id": first["tenant_id"],
        "batch_id": None,
        "occurred_at": now,
        "channel": first["channel"],
        "recipient": first["recipient"],
        "template_id": rule["template_id"],
        "content": None,
        "data_json": json.dumps(data, separators=(",", ":")),
        "priority": first.get("priority") or "normal",
        "lane": first.get("lane") or "transactional",
        "metadata": {"digest_key": header["digest_key"], "digest_items": str(len(items))},
        "address": None,
        "locale": None,
        "timezone": None,
        "profile_source": None,
        "rendered": None,
        "attempt": 0,
        "category": first.get("category"),
        "template_version": None,
        "send_at": None,
        "digest_id": header["digest_id"],
    }


def _data(item: dict[str, Any]) -> Any:
    """An item's data; one that is not JSON (validated upstream) must not block its digest."""
    try:
        return json.loads(item["data_json"])
    except ValueError:
        return {"data_json": item["data_json"]}
