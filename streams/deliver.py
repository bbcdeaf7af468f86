"""Stage 5, deliver: hand each notification to its channel's provider, record the result.

notifications.deliver.email   -> SMTP (aiosmtplib)
notifications.deliver.in_app  -> notifications.inbox (InAppMessage)
Status: sent | delivered | failed (with the reason and whether it is retriable).

Effects are at-least-once; the `delivered` table (notification id -> provider message id)
stops a redelivered or replayed message from being sent again. Transient failures are
retried in place a few times; after that the message is dead-lettered for replay.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from faust.types import EventT, StreamT

from connectors.base import Connector, DeliveryResult, OutboundMessage
from connectors.in_app import InAppConfig, InAppConnector
from connectors.smtp import SmtpConfig, SmtpConnector
from streams import config_views, metrics
from streams.app import app, settings, table, topics
from streams.events import (
    Rejected,
    dead_letter,
    decode_or_dead_letter,
    emit_status,
    guarded,
    now_ms,
    outgoing_headers,
)
from streams.expiry import Sweeper, is_live

STAGE = "deliver"

# notification_id -> {"provider", "provider_message_id", "outcome", "at", "partition"}
delivered = table("delivered")
_ttl_ms = settings.delivered_ttl_seconds * 1000
_sweeper = Sweeper(delivered, _ttl_ms)


async def _publish_inbox(key: str, record: dict[str, Any]) -> None:
    await topics.sink("notifications.inbox").send(key=key, value=record)


PROVIDERS: dict[str, Connector[Any]] = {
    "email": SmtpConnector(
        SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            start_tls=settings.smtp_start_tls,
            use_tls=settings.smtp_use_tls,
            sender=settings.smtp_from,
            timeout_seconds=settings.smtp_timeout_seconds,
        )
    ),
    "in_app": InAppConnector(InAppConfig(), _publish_inbox),
}


def outbound(notification: dict[str, Any]) -> OutboundMessage:
    rendered = notification["rendered"] or {}
    return OutboundMessage(
        notification_id=notification["notification_id"],
        tenant_id=notification["tenant_id"],
        channel=notification["channel"],
        to=notification["address"],
        subject=rendered.get("subject"),
        text=rendered.get("text") or "",
        html=rendered.get("html"),
        data_json=notification["data_json"],
        idempotency_key=notification["notification_id"],
    )


async def send_with_retries(provider: Connector[Any], message: OutboundMessage) -> DeliveryResult:
    """Retry transient failures with exponential backoff and jitter, a bounded number of times.

    Retry topics (so a slow provider does not hold the partition) come with failover.
    """
    result = await provider.deliver(message)
    for attempt in range(1, settings.deliver_max_attempts):
        if result.ok or not result.retriable:
            break
        backoff = settings.deliver_backoff_seconds * 2 ** (attempt - 1)
        delay = result.retry_after or backoff * (0.5 + random.random())
        await asyncio.sleep(min(delay, 30.0))
        result = await provider.deliver(message)
    return result


async def handle(event: EventT) -> None:
    headers = outgoing_headers(event)
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    nid = notification["notification_id"]
    previous = delivered.get(nid)
    if is_live(previous, now_ms(), _ttl_ms):
        # Already handed to the provider: repeat the status (idempotent), never the send.
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
        await emit_status(
            notification,
            "cancelled",
            stage=STAGE,
            headers=headers,
            reason=f"batch {notification['batch_id']} was cancelled",
        )
        metrics.processed(STAGE, "cancelled", notification["occurred_at"])
        return
    provider = PROVIDERS.get(notification["channel"])
    if provider is None:
        raise Rejected(f"no provider for channel {notification['channel']}")

    result = await send_with_retries(provider, outbound(notification))
    if result.ok:
        delivered[nid] = {
            "provider": result.provider,
            "provider_message_id": result.provider_message_id,
            "outcome": result.outcome,
            "at": now_ms(),
            "partition": event.message.partition,
        }
        _sweeper.maybe_sweep(event.message.partition, now_ms())
    elif result.retriable:
        # Out of attempts: park it for replay rather than lose it.
        await dead_letter(
            event,
            stage=STAGE,
            error=RuntimeError(result.reason),
            tenant_id=notification["tenant_id"],
            notification_id=nid,
        )
    await emit_status(
        notification,
        result.outcome,
        stage=STAGE,
        headers=headers,
        reason=result.reason,
        retriable=result.retriable,
        provider=result.provider,
        provider_message_id=result.provider_message_id,
    )
    metrics.processed(STAGE, result.outcome, notification["occurred_at"])


@app.agent(topics.source("notifications.deliver.email"), concurrency=1)
async def deliver_email(stream: StreamT) -> None:
    await config_views.ensure_ready()
    async for event in stream.events():
        await guarded(STAGE, event, handle)


@app.agent(topics.source("notifications.deliver.in_app"), concurrency=1)
async def deliver_in_app(stream: StreamT) -> None:
    await config_views.ensure_ready()
    async for event in stream.events():
        await guarded(STAGE, event, handle)
