"""Stage 5, deliver: hand each notification to a provider, fail over, retry, record.

notifications.deliver.<channel>[.bulk] -> provider -> notifications.status
                                        -> notifications.retry.<tier>   (transient: later)
                                        -> notifications.dead-letter    (attempts exhausted)
                                        -> notifications.recipient-events (device.invalid)

Per notification: the `delivered` table stops a second send; the tenant's rate limit may
park it on a retry topic; then its providers are tried in order (streams.delivery.providers) past
open circuits and spent rate limits (streams.delivery.delivery_attempts). A transient failure of
every provider parks it for another attempt with exponential backoff; a permanent one
fails it at once; either may fall back to the next channel the request allows.
Status: sent | delivered | deferred (retry due) | failed (why, retriable or not).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from faust.types import EventT

from connectors.base import Connector, OutboundMessage
from connectors.egress import Egress
from connectors.in_app import InAppConfig, InAppConnector
from connectors.smtp import SmtpConfig, SmtpConnector
from core.lanes import delivery_topic, lane_of
from core.rate_limits import RateLimits, parse_rate
from core.sealing import SecretBox
from streams.delivery.breakers import BreakerPolicy, Breakers
from streams.delivery.delivery_attempts import Attempts, try_providers
from streams.delivery.fallback import fall_back
from streams.delivery.providers import ProviderPool
from streams.delivery.retry import backoff_seconds, park
from streams.runtime import config_views, metrics
from streams.runtime.app import app, catalog, codec, settings, table, topics
from streams.runtime.events import (
    dead_letter,
    decode_or_dead_letter,
    emit_status,
    now_ms,
    outgoing_headers,
)
from streams.runtime.lane_agents import lane_agents
from streams.state.expiry import Sweeper, is_live

STAGE = "deliver"
CHANNELS = ("email", "sms", "whatsapp", "push", "chat", "webhook", "alert", "in_app")

# notification_id -> {"provider", "provider_id", "provider_message_id", "outcome", "at", …}
delivered = table("delivered")
_ttl_ms = settings.delivered_ttl_seconds * 1000
_sweeper = Sweeper(delivered, _ttl_ms)


async def _publish_inbox(key: str, record: dict[str, Any]) -> None:
    await topics.sink("notifications.inbox").send(key=key, value=record)


in_app = InAppConnector(InAppConfig(), _publish_inbox)


def _env_providers() -> dict[str, Connector[Any]]:
    smtp = SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password,
        start_tls=settings.smtp_start_tls,
        use_tls=settings.smtp_use_tls,
        sender=settings.smtp_from,
        timeout_seconds=settings.smtp_timeout_seconds,
    )
    return {
        # The operator's own relay (SMTP_HOST) may be private, a local sidecar for instance:
        # the address check guards what tenants configure, not the operator's settings.
        "env:smtp": SmtpConnector(smtp, egress=Egress(allow_private=True)),
        "env:in_app": in_app,
    }


pool = ProviderPool(
    box=SecretBox.from_settings(
        settings.provider_secrets_key.get_secret_value() if settings.provider_secrets_key else None,
        settings.provider_secrets_key_id,
        {k: v.get_secret_value() for k, v in settings.provider_secrets_old_keys.items()},
    ),
    egress=Egress(allow_private=settings.webhook_allow_private_targets),
    http_limits=httpx.Limits(max_connections=200),
    env=_env_providers(),
)
config_views.providers.add_listener(pool.on_config)
log = logging.getLogger(__name__)
breakers = Breakers(
    BreakerPolicy(
        window_seconds=settings.breaker_window_seconds,
        min_calls=settings.breaker_min_calls,
        failure_rate=settings.breaker_failure_rate,
        slow_call_seconds=settings.breaker_slow_call_seconds,
        open_seconds=settings.breaker_open_seconds,
    )
)
metrics.watch_breakers(breakers.states)
# A wait never exceeds the retry backoff's maximum, whatever rate a config names.
limits = RateLimits(max_wait_seconds=settings.deliver_backoff_max_seconds)


def outbound(notification: dict[str, Any]) -> OutboundMessage:
    rendered = notification["rendered"] or {}
    return OutboundMessage(
        notification_id=notification["notification_id"],
        tenant_id=notification["tenant_id"],
        channel=notification["channel"],
        to=notification["address"] or "",
        subject=rendered.get("subject"),
        text=rendered.get("text") or "",
        html=rendered.get("html"),
        data_json=notification["data_json"],
        idempotency_key=notification["notification_id"],
        recipient_id=(notification.get("recipient") or {}).get("user_id"),
        priority=notification.get("priority") or "normal",
        category=notification.get("category"),
        attempt=notification.get("attempt", 0),
    )


# Partitions owned per topic, counted once per assignment: the consumer's assignment() is
# a set built across threads, too dear to ask for on every notification.
_owned_partitions: dict[str, int] = {}


def _forget_owned_partitions(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
    _owned_partitions.clear()


app.on_partitions_assigned.connect(_forget_owned_partitions)  # type: ignore[arg-type]  # mode stub


def partition_share(topic: str) -> float:
    """The share of `topic`'s partitions this worker owns: its part of a shared rate limit."""
    owned = _owned_partitions.get(topic)
    if owned is None:
        owned = _owned_partitions[topic] = sum(
            1 for tp in app.consumer.assignment() if tp.topic == topic
        )
    partitions = catalog[delivery_topic("email", "transactional")].partitions
    return max(owned, 1) / partitions


def lane_budget(lane: str) -> float:
    """The part of every provider and tenant limit this process may spend on `lane`.

    Buckets live in each process. A worker serving both lanes (WORKER_LANE=all) spends the
    whole limit, the bulk lane leaving BULK_RESERVE_FRACTION of each bucket to transactional
    traffic. When the lanes run in separate processes (make run, compose) each would spend
    the whole limit and together exceed it 2x, so the limit is split: BULK_RATE_SHARE to the
    bulk lane, the rest to the transactional lane, whether or not the other lane is busy.
    """
    if settings.worker_lane == "all":
        return 1.0
    return settings.bulk_rate_share if lane == "bulk" else 1.0 - settings.bulk_rate_share


def tenant_rate(tenant_id: str) -> float | None:
    tenant = config_views.tenants.get(tenant_id) or {}
    configured = (tenant.get("settings") or {}).get("rate_limit_per_second")
    if not configured:
        return settings.tenant_rate_limit_per_second
    try:
        return parse_rate(configured)
    except ValueError as exc:  # a record written before the check: the platform default
        log.warning("tenant %s: rate_limit_per_second %r %s", tenant_id, configured, exc)
        return settings.tenant_rate_limit_per_second


async def handle(event: EventT) -> None:
    headers = outgoing_headers(event)
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    nid, tenant_id = notification["notification_id"], notification["tenant_id"]
    previous = delivered.get(nid)
    if is_live(previous, now_ms(), _ttl_ms):
        # Already handed to a provider: repeat the status (idempotent), never the send...
        if previous["provider"] == in_app.name:
            # ...except the inbox message: a produce, unacknowledged when the table write and
            # the status were, so a crash can keep those and lose it. Publishing it again is
            # safe: the sink keeps the first per notification id.
            await in_app.send(outbound(notification))
        await emit_status(
            notification,
            previous["outcome"],
            stage=STAGE,
            headers=headers,
            provider=previous["provider"],
            provider_message_id=previous["provider_message_id"],
        )
        metrics.processed(STAGE, "already_delivered", notification["occurred_at"])
        return
    if config_views.batch_cancelled(notification.get("batch_id")):
        reason = f"batch {notification['batch_id']} was cancelled"
        await emit_status(notification, "cancelled", stage=STAGE, headers=headers, reason=reason)
        metrics.processed(STAGE, "cancelled", notification["occurred_at"])
        return
    lane = lane_of(notification)
    share = partition_share(event.message.topic) * lane_budget(lane)
    wait = limits.take(f"tenant:{tenant_id}", tenant_rate(tenant_id), share=share)
    if wait > 0:
        metrics.rate_limited("tenant", wait)
        await park(notification, wait, key=event.key, headers=headers)
        metrics.processed(STAGE, "tenant_rate_limited", notification["occurred_at"])
        return

    attempts = await try_providers(
        pool.ordered_ids(notification, settings.default_providers),
        outbound(notification),
        pool=pool,
        breakers=breakers,
        limits=limits,
        share=share,
        reserve_fraction=(
            settings.bulk_reserve_fraction
            if lane == "bulk" and settings.worker_lane == "all"
            else 0.0
        ),
    )
    result = attempts.result
    if result is not None and result.ok:
        await _succeeded(event, notification, attempts, headers)
    elif result is None and attempts.rate_wait is not None and not attempts.log:
        # Every provider is out of tokens: wait for one, no attempt spent.
        await park(notification, attempts.rate_wait, key=event.key, headers=headers)
        metrics.processed(STAGE, "provider_rate_limited", notification["occurred_at"])
    else:
        await _failed(event, notification, attempts, headers)


async def _succeeded(
    event: EventT, notification: dict[str, Any], attempts: Attempts, headers: dict[str, bytes]
) -> None:
    result = attempts.result
    assert result is not None
    earlier = attempts.log[:-1]
    delivered[notification["notification_id"]] = {
        "provider": result.provider,
        "provider_id": attempts.provider_id,
        "provider_message_id": result.provider_message_id,
        "outcome": result.outcome,
        "at": now_ms(),
        "partition": event.message.partition,
    }
    _sweeper.maybe_sweep(event.message.partition, now_ms())
    await emit_status(
        notification,
        result.outcome,
        stage=STAGE,
        headers=headers,
        reason=f"after failover from {Attempts(log=earlier).summary()}" if earlier else None,
        provider=result.provider,
        provider_message_id=result.provider_message_id,
    )
    metrics.processed(STAGE, result.outcome, notification["occurred_at"])


async def _failed(
    event: EventT, notification: dict[str, Any], attempts: Attempts, headers: dict[str, bytes]
) -> None:
    result, attempt = attempts.result, notification.get("attempt", 0)
    log = [*notification.get("delivery_log", []), *attempts.log]
    provider = result.provider if result else None
    if result is not None and result.address_invalid:
        await _address_invalid(notification, result.provider, result.reason, headers)
    if not attempts.log and not attempts.transient:
        reason = f"no provider is configured for the {notification['channel']} channel"
    else:
        reason = attempts.summary()
    if attempts.transient and attempt + 1 < settings.deliver_max_attempts:
        delay = backoff_seconds(
            attempt + 1,
            base=settings.deliver_backoff_seconds,
            cap=settings.deliver_backoff_max_seconds,
            retry_after=max(attempts.rate_wait or 0.0, (result and result.retry_after) or 0.0),
        )
        retry = {**notification, "attempt": attempt + 1, "delivery_log": log}
        due = await park(retry, delay, key=event.key, headers=headers)
        await emit_status(
            notification,
            "deferred",
            stage=STAGE,
            headers=headers,
            reason=f"attempt {attempt + 1} of {settings.deliver_max_attempts} failed ({reason}); "
            "retrying",
            retriable=True,
            provider=provider,
            deferred_until=due,
        )
        metrics.processed(STAGE, "retry_scheduled", notification["occurred_at"])
        return
    if attempts.transient:
        await _park_for_replay(event, notification, log, reason)
    fallback_id = await fall_back(notification, reason, headers)
    if fallback_id:
        reason = f"{reason}; falling back to notification {fallback_id}"
    await emit_status(
        notification,
        "failed",
        stage=STAGE,
        headers=headers,
        reason=reason,
        retriable=attempts.transient,
        provider=provider,
    )
    metrics.processed(STAGE, "failed", notification["occurred_at"])


async def _park_for_replay(
    event: EventT, notification: dict[str, Any], log: list[dict[str, Any]], reason: str
) -> None:
    """Out of attempts: dead-letter a fresh copy a replay sends straight back to delivery."""
    fresh = {**notification, "attempt": 0, "not_before": None, "delivery_log": []}
    target = delivery_topic(notification["channel"], lane_of(notification))
    await dead_letter(
        event,
        stage=STAGE,
        error=RuntimeError(
            f"delivery failed after {settings.deliver_max_attempts} attempts: {reason}"
        ),
        tenant_id=notification["tenant_id"],
        notification_id=notification["notification_id"],
        error_history=[
            f"attempt {a['attempt']} {a['provider_id']}: {a['reason'] or a['outcome']}" for a in log
        ],
        source_topic=catalog.name(target),
        value=codec.encode("Notification", fresh),
    )


async def _address_invalid(
    notification: dict[str, Any], provider: str, reason: str | None, headers: dict[str, bytes]
) -> None:
    """Tell the user's owners the address is dead (a push token, usually), once per notification."""
    channel = notification["channel"]
    event_type = "device.invalid" if channel == "push" else "address.invalid"
    user_id = (notification.get("recipient") or {}).get("user_id")
    record = {
        "event_id": f"{notification['notification_id']}:{event_type}",
        "event_type": event_type,
        "tenant_id": notification["tenant_id"],
        "user_id": user_id,
        "channel": channel,
        "address": notification.get("address") or "",
        "provider": provider,
        "reason": reason,
        "notification_id": notification["notification_id"],
        "occurred_at": now_ms(),
    }
    key = f"{notification['tenant_id']}:{user_id or ''}"
    await topics.sink("notifications.recipient-events").send(key=key, value=record, headers=headers)


for _channel in CHANNELS:
    lane_agents(
        f"notifications.deliver.{_channel}", f"{STAGE}-{_channel}", handle, needs_views=True
    )
