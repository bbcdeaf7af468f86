"""Frequency caps: pure sliding-window counting over a recipient's recent notifications.

The enrich stage keeps one value per recipient in the `frequency` table:
{cap id: {notification id: epoch ms}}. Keying the entries by notification id makes counting
idempotent under replay: a notification counted once is never counted twice, and a replayed
notification that was let through the first time is let through again.
"""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]
State = dict[str, dict[str, int]]


def cap_id(cap: Record) -> str:
    return (
        f"{cap.get('channel') or '*'}/{cap.get('category') or '*'}/"
        f"{cap['max_count']}/{cap['period_seconds']}s"
    )


def matches(cap: Record, channel: str, category: str) -> bool:
    return cap.get("channel") in (None, channel) and cap.get("category") in (None, category)


def describe(cap: Record) -> str:
    scope = " ".join(filter(None, [cap.get("category"), cap.get("channel")])) or "all"
    return f"{scope} notifications: at most {cap['max_count']} per {cap['period_seconds']}s"


def _recent(entries: dict[str, int], cap: Record, now_ms: int) -> dict[str, int]:
    since = now_ms - int(cap["period_seconds"]) * 1000
    return {nid: at for nid, at in entries.items() if at > since}


def exceeded(
    state: State | None,
    caps: list[Record],
    notification_id: str,
    channel: str,
    category: str,
    now_ms: int,
) -> str | None:
    """The reason the first matching cap that is full suppresses this notification, or None."""
    for cap in caps:
        if not matches(cap, channel, category):
            continue
        recent = _recent((state or {}).get(cap_id(cap), {}), cap, now_ms)
        if notification_id in recent:
            continue  # already counted: a replay of a notification that went through
        if len(recent) >= int(cap["max_count"]):
            return f"frequency cap reached ({describe(cap)})"
    return None


def record(
    state: State | None,
    caps: list[Record],
    notification_id: str,
    channel: str,
    category: str,
    now_ms: int,
) -> State:
    """The new state with this notification counted in every matching cap, old entries pruned.

    Windows of caps no longer configured are dropped.
    """
    old = state or {}
    new: State = {}
    for cap in caps:
        key = cap_id(cap)
        entries = _recent(old.get(key, {}), cap, now_ms)
        if matches(cap, channel, category):
            entries.setdefault(notification_id, now_ms)
        if entries:
            new[key] = entries
    return new
