"""Pure decisions of the enrich stage about a recipient's preferences (no I/O, no clock).

Every function takes the records it needs (Preferences, Tenant, Template as decoded dicts)
and returns a decision with the reason a user will read in the status event. The stage
(streams.stages.enrich) applies them in the order documented in docs/preferences.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Record = dict[str, Any]


class PreferenceError(ValueError):
    """A preference value the rules cannot apply (e.g. quiet hours '25:00')."""


def effective_preferences(user: Record | None, tenant: Record | None) -> Record | None:
    """The user's own record, else the tenant's default preferences, else none."""
    if user is not None:
        return user
    return (tenant or {}).get("default_preferences")


def critical_override(notification: Record, template: Record | None) -> bool:
    """A critical notification whose template allows it skips preferences, digests and caps."""
    return notification.get("priority") == "critical" and bool(
        template and template.get("critical_overrides_preferences")
    )


def category_of(notification: Record, template: Record | None) -> str:
    """The template's category wins; else the request's; else transactional."""
    if template and template.get("category"):
        return str(template["category"])
    return str(notification.get("category") or "transactional")


def suppression_reason(
    prefs: Record | None, channel: str, category: str | None = None, template_id: str | None = None
) -> str | None:
    """Why these preferences suppress the notification, or None.

    Opt-out and do-not-disturb come first; then the most specific toggle with an opinion
    decides: template+channel, template, category+channel, category, channel.
    """
    if prefs is None:
        return None
    if prefs.get("opted_out"):
        return "recipient opted out of all notifications"
    if prefs.get("do_not_disturb"):
        return "recipient has do not disturb on"
    template_toggle = (prefs.get("templates") or {}).get(template_id) if template_id else None
    category_toggle = (prefs.get("categories") or {}).get(category) if category else None
    levels: list[tuple[bool | None, str]] = []
    if template_toggle:
        levels.append(
            (
                (template_toggle.get("channels") or {}).get(channel),
                f"recipient disabled template {template_id} on {channel}",
            )
        )
        levels.append(
            (template_toggle.get("enabled"), f"recipient disabled template {template_id}")
        )
    if category_toggle:
        levels.append(
            (
                (category_toggle.get("channels") or {}).get(channel),
                f"recipient disabled {category} notifications on {channel}",
            )
        )
        levels.append(
            (category_toggle.get("enabled"), f"recipient disabled {category} notifications")
        )
    levels.append(
        ((prefs.get("channels") or {}).get(channel), f"recipient disabled the {channel} channel")
    )
    for enabled, reason in levels:
        if enabled is not None:
            return None if enabled else reason
    return None


def zone(*names: str | None) -> ZoneInfo:
    """The first valid IANA zone among `names`, else UTC."""
    for name in names:
        if not name:
            continue
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return ZoneInfo("UTC")


def parse_hhmm(value: str) -> dtime:
    try:
        hours, minutes = value.split(":")
        return dtime(int(hours), int(minutes))
    except (ValueError, AttributeError) as exc:
        raise PreferenceError(f"quiet hours: {value!r} is not HH:MM") from exc


def quiet_hours_release(quiet: Record | None, tz: ZoneInfo, now_ms: int) -> int | None:
    """If `now_ms` falls in the daily quiet window, the epoch ms at which the window ends.

    start == end is an empty window. A window whose end is before its start crosses midnight.
    """
    if not quiet:
        return None
    start, end = parse_hhmm(quiet["start"]), parse_hhmm(quiet["end"])
    if start == end:
        return None
    local = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(tz)
    now_t = local.time().replace(tzinfo=None)
    today = local.date()
    if start < end:
        if not start <= now_t < end:
            return None
        end_day = today
    elif now_t >= start:
        end_day = today + timedelta(days=1)
    elif now_t < end:
        end_day = today
    else:
        return None
    release = datetime.combine(end_day, end, tzinfo=tz)
    return int(release.timestamp() * 1000)


def quiet_hours_reason(quiet: Record, tz: ZoneInfo) -> str:
    return f"recipient's quiet hours {quiet['start']}-{quiet['end']} ({tz.key})"


def send_at_reason(send_at_ms: int) -> str:
    when = datetime.fromtimestamp(send_at_ms / 1000, UTC)
    return f"scheduled for {when.strftime('%Y-%m-%dT%H:%M:%SZ')} (send_at)"


def digest_rule(template: Record | None, tenant: Record | None, category: str) -> Record | None:
    """The template's own rule, else the tenant's rule for the category."""
    if template and template.get("digest"):
        return dict(template["digest"])
    rule = ((tenant or {}).get("digest_rules") or {}).get(category)
    return dict(rule) if rule else None


def data_value(data_json: str, path: str) -> str:
    """The value at a dotted path of the notification's data, as text ("" when absent)."""
    if not path:
        return ""
    try:
        value: Any = json.loads(data_json or "{}")
    except ValueError:
        return ""
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return ""
        value = value[part]
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def digest_key(notification: Record, rule: Record, category: str) -> str:
    scope = notification.get("template_id") or category
    value = data_value(notification.get("data_json") or "{}", rule.get("key") or "")
    return f"{scope}|{notification['channel']}|{value}"


def frequency_caps(user: Record | None, tenant: Record | None) -> list[Record]:
    """The user's caps plus the tenant's default caps (each cap once)."""
    defaults = ((tenant or {}).get("default_preferences") or {}).get("frequency_caps") or []
    own = (user or {}).get("frequency_caps") or []
    caps: list[Record] = []
    for cap in [*own, *defaults]:
        if cap not in caps:
            caps.append(dict(cap))
    return caps
