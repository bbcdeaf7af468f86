"""Stage 2, enrich: decide whether, when and where a notification goes.

notifications.accepted -> render -> route, in this consumer (or a status, a deferral, a digest)
users.profiles, users.preferences (compacted) -> the `profiles` and `preferences` tables.
All are keyed tenant_id:user_id with equal partition counts, so the join is local; the
`frequency` table (recent sends per cap) is keyed the same way and written only here.

The decision order, every reason string and the enrichment sources are documented in
docs/preferences.md; the rules themselves are pure functions in streams.state.preferences and
streams.state.frequency.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import EventT, StreamT

from core import tracing
from core.ids import expected_partition
from streams.content import templates
from streams.runtime import config_views, metrics
from streams.runtime.app import app, settings, table, topics
from streams.runtime.events import (
    Rejected,
    dead_letter,
    decode_or_dead_letter,
    emit_status,
    now_ms,
    outgoing_headers,
)
from streams.runtime.lane_agents import lane_agents
from streams.stages.render import render_step
from streams.state import frequency
from streams.state import preferences as rules
from streams.state.deferral import collect_into_digest, defer
from streams.state.user_service import UserServiceClient

log = logging.getLogger(__name__)

STAGE = "enrich"
DEFAULT_LOCALE = "en"
DEFAULT_TIMEZONE = "UTC"

profiles = table("profiles")  # tenant_id:user_id -> UserProfile record
preferences = table("preferences")  # tenant_id:user_id -> Preferences record
frequency_windows = table("frequency")  # tenant_id:user_id -> {cap id: {notification id: ms}}

_user_service: UserServiceClient | None = None


def user_service() -> UserServiceClient | None:
    """The process's user service client (one cache and breaker), if a URL is configured."""
    global _user_service
    if _user_service is None and settings.user_service_url:
        _user_service = UserServiceClient(
            settings.user_service_url,
            timeout=settings.user_service_timeout_seconds,
            cache_ttl=settings.user_service_cache_ttl_seconds,
            breaker_failures=settings.user_service_breaker_failures,
            breaker_reset=settings.user_service_breaker_reset_seconds,
        )
    return _user_service


def suppression_reason(prefs: dict[str, Any] | None, channel: str) -> str | None:
    """Channel-level preferences only (kept for callers of the first version)."""
    return rules.suppression_reason(prefs, channel)


# Channels whose provider configuration may name the target itself (a webhook URL, an
# alerting service's routing key, a chat webhook): no per-user address is needed.
TARGET_IN_PROVIDER_CONFIG = frozenset({"webhook", "alert", "chat"})


def resolve_address(
    channel: str,
    recipient: dict[str, Any],
    profile: dict[str, Any] | None,
    profile_source: str = "profile",
) -> tuple[str | None, str]:
    """The address for the channel and where it came from: the profile, else the request."""
    if channel == "in_app":
        return recipient["user_id"], "request"
    field = {"email": "email", "sms": "phone", "whatsapp": "phone"}.get(channel)
    if field is None:
        # Push tokens, chat ids, webhook URLs: the `addresses` map, profile first.
        for source, holder in ((profile_source, profile), ("request", recipient)):
            address = ((holder or {}).get("addresses") or {}).get(channel)
            if address:
                return address, source
        if channel in TARGET_IN_PROVIDER_CONFIG:
            return "", "provider"
        return None, "none"
    if profile and profile.get(field):
        return profile[field], profile_source
    if recipient.get(field):
        return recipient[field], "request"
    return None, "none"


def enrich(
    notification: dict[str, Any],
    profile: dict[str, Any] | None,
    profile_source: str = "profile",
    tenant: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Address, locale and timezone: explicit request fields, the profile, the tenant, defaults."""
    recipient = notification["recipient"]
    address, source = resolve_address(notification["channel"], recipient, profile, profile_source)
    profile = profile or {}
    tenant = tenant or {}
    return {
        **notification,
        "address": address,
        "locale": recipient.get("locale")
        or profile.get("locale")
        or tenant.get("default_locale")
        or DEFAULT_LOCALE,
        "timezone": recipient.get("timezone")
        or profile.get("timezone")
        or tenant.get("timezone")
        or DEFAULT_TIMEZONE,
        "profile_source": source,
    }


async def find_profile(key: str, notification: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The users.profiles record, else the user service's answer (never raises)."""
    profile = profiles.get(key)
    if profile is not None:
        return profile, "profile"
    client = user_service()
    if client is not None:
        try:
            found = await client.get(
                notification["tenant_id"], notification["recipient"]["user_id"]
            )
        except Exception:  # the service is optional: a bug here must not fail the notification
            log.exception("user service lookup failed")
            found = None
        if found is not None:
            return found, "user_service"
    return None, "request"


async def _stop(
    notification: dict[str, Any], status: str, outcome: str, reason: str, headers: dict[str, bytes]
) -> None:
    await emit_status(notification, status, stage=STAGE, headers=headers, reason=reason)
    metrics.processed(STAGE, outcome, notification["occurred_at"])


async def handle(event: EventT) -> None:
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    await enrich_step(notification, str(event.key), outgoing_headers(event))


async def enrich_step(notification: dict[str, Any], key: str, headers: dict[str, bytes]) -> None:
    """Decide whether, when and where; then render and route, in this consumer.

    Called by this stage's agent, and by the request stage for a notification whose key is
    in the partition of the request it came from (the tables here are that partition's)."""
    await config_views.ensure_ready()
    tenant_id, channel = notification["tenant_id"], notification["channel"]

    reason: str | None
    # 1-2. The batch and the tenant.
    if config_views.batch_cancelled(notification.get("batch_id")):
        reason = f"batch {notification['batch_id']} was cancelled"
        await _stop(notification, "cancelled", "cancelled", reason, headers)
        return
    tenant = config_views.tenants.get(tenant_id)
    if tenant is not None and not tenant.get("enabled", True):
        await _stop(
            notification, "failed", "tenant_disabled", f"tenant {tenant_id} is disabled", headers
        )
        return

    # 3. The template: its version and category travel with the notification.
    template = None
    if notification.get("template_id"):
        template = templates.resolve(
            tenant_id, notification["template_id"], notification.get("template_version")
        )
    if template is not None:
        notification["template_version"] = int(template["version"])
    category = rules.category_of(notification, template)
    notification["category"] = category

    # 4. The profile: the table, the user service, the request.
    profile, source = await find_profile(key, notification)
    enriched = enrich(notification, profile, source, tenant)

    # 5. Preferences (a critical notification whose template allows it skips 5, 7, 8, 9).
    user_prefs = preferences.get(key)
    prefs = rules.effective_preferences(user_prefs, tenant)
    override = rules.critical_override(notification, template)
    if override:
        enriched["metadata"] = {
            **(enriched.get("metadata") or {}),
            "preferences_overridden": "critical priority; the template overrides preferences",
        }
    else:
        reason = rules.suppression_reason(prefs, channel, category, notification.get("template_id"))
        if reason is not None:
            await _stop(notification, "suppressed", "suppressed", reason, headers)
            return

    # 6. A future send_at.
    now = now_ms()
    send_at = notification.get("send_at")
    if send_at and send_at > now:
        await defer(
            enriched, send_at, reason=rules.send_at_reason(send_at), stage=STAGE, headers=headers
        )
        metrics.processed(STAGE, "deferred", notification["occurred_at"])
        return

    if not override:
        # 7. Digests: collected, sent later as one notification (which has a digest_id).
        rule = (
            rules.digest_rule(template, tenant, category)
            if not notification.get("digest_id")
            else None
        )
        if rule is not None:
            digest_key = rules.digest_key(notification, rule, category)
            await collect_into_digest(enriched, rule, digest_key, stage=STAGE, headers=headers)
            metrics.processed(STAGE, "digest", notification["occurred_at"])
            return

        # 8. Quiet hours.
        quiet = (prefs or {}).get("quiet_hours")
        if quiet:
            # The recipient's zone as enrichment found it (request, profile, tenant), then
            # the profile's and tenant's in case an earlier one is not a valid zone name.
            tz = rules.zone(
                quiet.get("timezone"),
                enriched["timezone"],
                (profile or {}).get("timezone"),
                (tenant or {}).get("timezone"),
            )
            try:
                release = rules.quiet_hours_release(quiet, tz, now)
            except rules.PreferenceError as exc:
                log.warning("%s: ignoring quiet hours of %s: %s", STAGE, key, exc)
                release = None
            if release is not None:
                reason = rules.quiet_hours_reason(quiet, tz)
                await defer(enriched, release, reason=reason, stage=STAGE, headers=headers)
                metrics.processed(STAGE, "deferred", notification["occurred_at"])
                return

    # 9. Frequency caps, then 10. the address.
    caps: list[dict[str, Any]] = [] if override else rules.frequency_caps(user_prefs, tenant)
    nid = notification["notification_id"]
    if caps:
        reason = frequency.exceeded(frequency_windows.get(key), caps, nid, channel, category, now)
        if reason is not None:
            await _stop(notification, "suppressed", "capped", reason, headers)
            return
    if enriched["address"] is None:
        reason = f"no {channel} address for recipient {notification['recipient']['user_id']}"
        await _stop(notification, "failed", "no_address", reason, headers)
        return
    if caps:
        # No await between this read and write: only this agent writes the table.
        windows = frequency_windows.get(key)
        frequency_windows[key] = frequency.record(windows, caps, nid, channel, category, now)
    metrics.processed(STAGE, "enriched", notification["occurred_at"])
    # Render and route are the next steps of this consumer (streams/stages/render.py says why).
    await render_step(enriched, key, tracing.child_headers(headers))


lane_agents("notifications.accepted", STAGE, handle)


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
