"""Stage 2, enrich: join the recipient's profile and preferences; resolve address and locale.

notifications.accepted -> notifications.enriched
users.profiles, users.preferences (compacted) -> the `profiles` and `preferences` tables.
All are keyed tenant_id:user_id with equal partition counts, so the join is local.
Status: suppressed (opted out, with the reason) | failed (no address for the channel).
"""

from __future__ import annotations

from typing import Any

from aiokafka.partitioner import murmur2
from faust.types import EventT, StreamT

from streams import metrics
from streams.app import app, table, topics
from streams.events import (
    Rejected,
    dead_letter,
    decode_or_dead_letter,
    emit_status,
    guarded,
    outgoing_headers,
)

STAGE = "enrich"
DEFAULT_LOCALE = "en"
DEFAULT_TIMEZONE = "UTC"

profiles = table("profiles")  # tenant_id:user_id -> UserProfile record
preferences = table("preferences")  # tenant_id:user_id -> Preferences record


def suppression_reason(prefs: dict[str, Any] | None, channel: str) -> str | None:
    if prefs is None:
        return None
    if prefs.get("opted_out"):
        return "recipient opted out of all notifications"
    if prefs.get("channels", {}).get(channel) is False:
        return f"recipient disabled the {channel} channel"
    return None


def resolve_address(
    channel: str, recipient: dict[str, Any], profile: dict[str, Any] | None
) -> tuple[str | None, str]:
    """The address for the channel and where it came from: the profile, else the request."""
    if channel == "in_app":
        return recipient["user_id"], "request"
    field = {"email": "email", "sms": "phone", "whatsapp": "phone"}.get(channel)
    if field is None:
        # Push tokens, chat handles and webhook URLs arrive with their connectors.
        return None, "none"
    if profile and profile.get(field):
        return profile[field], "profile"
    if recipient.get(field):
        return recipient[field], "request"
    return None, "none"


def enrich(notification: dict[str, Any], profile: dict[str, Any] | None) -> dict[str, Any]:
    recipient = notification["recipient"]
    address, source = resolve_address(notification["channel"], recipient, profile)
    profile = profile or {}
    return {
        **notification,
        "address": address,
        "locale": recipient.get("locale") or profile.get("locale") or DEFAULT_LOCALE,
        "timezone": recipient.get("timezone") or profile.get("timezone") or DEFAULT_TIMEZONE,
        "profile_source": source,
    }


async def handle(event: EventT) -> None:
    headers = outgoing_headers(event)
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    key = event.key
    reason = suppression_reason(preferences.get(key), notification["channel"])
    if reason is not None:
        await emit_status(notification, "suppressed", stage=STAGE, headers=headers, reason=reason)
        metrics.processed(STAGE, "suppressed", notification["occurred_at"])
        return
    enriched = enrich(notification, profiles.get(key))
    if enriched["address"] is None:
        await emit_status(
            notification,
            "failed",
            stage=STAGE,
            headers=headers,
            reason=f"no {notification['channel']} address for recipient "
            f"{notification['recipient']['user_id']}",
        )
        metrics.processed(STAGE, "no_address", notification["occurred_at"])
        return
    await topics.sink("notifications.enriched").send(key=key, value=enriched, headers=headers)
    metrics.processed(STAGE, "enriched", notification["occurred_at"])


@app.agent(topics.source("notifications.accepted"), concurrency=1)
async def enrich_notifications(stream: StreamT) -> None:
    async for event in stream.events():
        await guarded(STAGE, event, handle)


def expected_partition(key: str, partitions: int) -> int:
    """Where murmur2 (Java's and Faust's partitioner) puts `key`."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


async def _materialise(event: EventT, target: Any, schema_name: str) -> None:
    """Apply one event of a compacted configuration topic to its table."""
    message, key = event.message, event.key
    stage = f"{STAGE}:{schema_name}"
    if not isinstance(key, str) or not key:
        await dead_letter(event, stage=stage, error=Rejected("key: tenant_id:user_id required"))
        return
    expected = expected_partition(key, target.partitions)
    if message.partition != expected:
        # Stored here, the record would never meet its user's notifications: say so loudly.
        error = Rejected(
            f"key {key!r} is on partition {message.partition}, murmur2 puts it on "
            f"{expected}: produce {message.topic} with the murmur2 partitioner "
            "(librdkafka: partitioner=murmur2_random)"
        )
        await dead_letter(event, stage=stage, error=error)
        return
    if event.value is None:  # tombstone
        target.pop(key, None)
        return
    record = await decode_or_dead_letter(event, schema_name, stage)
    if record is not None:
        target[key] = record


@app.agent(topics.source("users.profiles"), concurrency=1)
async def materialise_profiles(stream: StreamT) -> None:
    async for event in stream.events():
        await _materialise(event, profiles, "UserProfile")


@app.agent(topics.source("users.preferences"), concurrency=1)
async def materialise_preferences(stream: StreamT) -> None:
    async for event in stream.events():
        await _materialise(event, preferences, "Preferences")
