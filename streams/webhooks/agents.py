"""Outgoing status webhooks: tenants' systems get their status events as signed POSTs.

    notifications.status -> dispatch -> webhooks.outgoing -> deliver -> the subscriber's URL
                                                       -> webhooks.retry.<tier> (transient)
                                                       -> webhooks.delivery-log (each attempt)

- **dispatch** runs in the status stage's batched loop (streams/stages/status_loop.py) on
  every status event and, for each enabled subscription of its tenant whose event types
  include its status (streams.webhooks.subscriptions), writes one
  WebhookDelivery keyed tenant_id:subscription_id. Its id is derived from the event and the
  subscription, so a replayed status event yields the same delivery id.
- **deliver** POSTs it, signed with the subscription's current secret(s), to the
  subscription's current URL (streams.webhooks.sender), and logs the attempt. A transient
  failure parks the job on a retry tier (streams.webhooks.retry) until its next attempt; a
  permanent one, or the last attempt, ends it as failed. A deleted or disabled
  subscription's pending deliveries are skipped. Several deliveries are in flight at once
  (WEBHOOK_DELIVERY_CONCURRENCY), so one slow receiver does not hold back the others.

At-least-once: a crash may repeat an attempt; receivers deduplicate on X-Webhook-Id (the
delivery id), and the delivery log keeps one row per attempt id. Deliveries are not
notifications and produce no status events, so webhooks never feed themselves.
Runs on the transactional (or "all") worker only: status has one topic, not one per lane.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from confluent_kafka import Message
from faust.types import EventT, StreamT

from connectors.egress import Egress, guarded_client
from core.sealing import SealingError
from streams.runtime import metrics
from streams.runtime.app import app, settings, topics
from streams.runtime.batch_loop import Context
from streams.runtime.events import decode_or_dead_letter, guarded, now_ms, outgoing_headers
from streams.runtime.loop_stage import child_headers, produce
from streams.runtime.parts import runs_status_flows
from streams.webhooks import subscriptions as webhook_subscriptions
from streams.webhooks.retry import next_step, register_release_agents
from streams.webhooks.rules import (
    Answer,
    Outcome,
    body,
    delivery_job,
    headers,
    log_record,
    matches,
    subscription_key,
)
from streams.webhooks.sender import post

log = logging.getLogger(__name__)

DISPATCH = "webhook-dispatch"
DELIVER = "webhook-deliver"

# Guarded (connectors/egress.py): each connection goes to the address that was checked.
_client = guarded_client(
    Egress(allow_private=settings.webhook_allow_private_targets),
    limits=httpx.Limits(max_connections=max(10, settings.webhook_delivery_concurrency * 4)),
)


async def dispatch(status: dict[str, Any], message: Message, context: Context) -> None:
    """Called by the status stage's loop (streams/stages/status.py) for each status event."""
    sent = 0
    for subscription in webhook_subscriptions.for_tenant(status["tenant_id"]):
        if not matches(subscription, status):
            continue
        job = delivery_job(status, subscription, now_ms())
        key = subscription_key(job["tenant_id"], job["subscription_id"])
        await produce(context, "webhooks.outgoing", key, job, child_headers(message))
        sent += 1
    if sent:
        metrics.processed(DISPATCH, "dispatched", status["occurred_at"])


async def deliver(event: EventT) -> None:
    job = await decode_or_dead_letter(event, "WebhookDelivery", DELIVER)
    if job is None:
        return
    subscription = webhook_subscriptions.get(job["tenant_id"], job["subscription_id"])
    if subscription is None or not subscription.get("enabled", True):
        why = "deleted" if subscription is None else "disabled"
        await _log(job, Answer("permanent", error=f"the subscription was {why}"), "skipped", "")
        return
    url = subscription["url"]
    try:
        secrets = webhook_subscriptions.secrets_for(subscription, now_ms())
    except SealingError as exc:
        log.error("webhook %s: %s", job["subscription_id"], exc)
        await _log(
            job, Answer("permanent", error="the signing secret cannot be opened"), "failed", url
        )
        return
    payload = body(job)
    answer = await post(
        _client,
        url,
        payload,
        headers(job, payload, secrets, int(time.time())),
        timeout_seconds=settings.webhook_timeout_seconds,
    )
    step = next_step(
        job,
        answer,
        now_ms=now_ms(),
        max_attempts=settings.webhook_max_attempts,
        base_seconds=settings.webhook_backoff_seconds,
        cap_seconds=settings.webhook_backoff_max_seconds,
    )
    next_at = None
    if step.retry is not None:
        await topics.sink(step.retry_topic).send(
            key=event.key, value=step.retry, headers=outgoing_headers(event)
        )
        next_at = step.retry["not_before"]
    await _log(job, answer, step.outcome, url, next_at)


async def _log(
    job: dict[str, Any], answer: Answer, outcome: Outcome, url: str, next_at: int | None = None
) -> None:
    record = log_record(job, answer, outcome, url=url, now_ms=now_ms(), next_attempt_at=next_at)
    await topics.sink("webhooks.delivery-log").send(
        key=subscription_key(job["tenant_id"], job["subscription_id"]), value=record
    )
    metrics.processed(DELIVER, outcome)


def _agent(source: str, name: str, handler: Any, concurrency: int) -> None:
    async def run(stream: StreamT) -> None:
        await webhook_subscriptions.ensure_ready()
        async for event in stream.events():
            await guarded(name, event, handler)
            await asyncio.sleep(0)  # see streams/runtime/lane_agents.py

    run.__name__ = run.__qualname__ = name.replace("-", "_")
    app.agent(topics.source(source), name=name, concurrency=concurrency)(run)


if runs_status_flows(settings):
    # Concurrent: the agents share the partitions' queue, and Faust commits an offset only
    # once every event before it is done. Order between deliveries is not promised.
    _agent("webhooks.outgoing", DELIVER, deliver, settings.webhook_delivery_concurrency)
    register_release_agents()
