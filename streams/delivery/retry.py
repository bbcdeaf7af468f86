"""Retry topics: notifications wait here, not in the deliver agent, for their next attempt.

deliver -> notifications.retry.<tier> -> (at not_before) -> notifications.deliver.<channel>[.bulk]

A notification goes to the tier whose span holds its wait: `short` (< 10 s), `medium`
(< 2 min), `long` (< 10 min), `longest`. Each tier's agent waits for the head of each
partition's queue, then forwards it to its delivery topic. Waits within a tier are of the
same order, so a message is held behind another by at most its tier's upper bound (10 s,
2 min, 10 min; 30 min, WEBHOOK_BACKOFF_MAX_SECONDS, in `longest`): the reason for tiers
rather than one topic. Before `longest`, a webhook endpoint's 30-minute retry held every 2-
minute retry of its partition, of every tenant, for up to 28 minutes. Rate-limited
notifications wait here too, for a token, with no attempt counted.

A rebalance waits for every message an agent is processing (Faust's wait_empty), and a
waiting head is one: it used to hold the group's rebalance for up to its whole wait. Now,
when the worker stops taking messages for a rebalance, the waiting head is parked again on
its own tier topic (same key, so the same partition, for its next owner) and acknowledged.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import EventT, StreamT

from core.lanes import delivery_topic, lane_of
from streams.runtime import metrics
from streams.runtime.app import app, settings, topics
from streams.runtime.events import decode_or_dead_letter, guarded, now_ms, outgoing_headers
from streams.runtime.parts import runs_stage_feeders

STAGE = "retry"
TIERS: tuple[tuple[str, float], ...] = (
    ("short", 10.0),
    ("medium", 120.0),
    ("long", 600.0),
    ("longest", float("inf")),
)
# How often a waiting head checks whether the worker is handing its partitions over.
HANDOVER_POLL_SECONDS = 0.5


def tier_for(wait_seconds: float) -> str:
    return next(name for name, limit in TIERS if wait_seconds < limit)


def backoff_seconds(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None
) -> float:
    """Exponential backoff with full jitter over [delay/2, delay], at least Retry-After."""
    delay = min(cap, base * 2 ** max(0, attempt - 1))
    jittered = delay * (0.5 + random.random() / 2)
    return min(cap, max(jittered, retry_after or 0.0))


async def park(
    notification: dict[str, Any], wait_seconds: float, *, key: Any, headers: dict[str, bytes]
) -> int:
    """Send the notification to its retry tier, due after `wait_seconds`; return the due time."""
    due = now_ms() + int(wait_seconds * 1000)
    parked = {**notification, "not_before": due}
    tier = tier_for(wait_seconds)
    await topics.sink(f"notifications.retry.{tier}").send(key=key, value=parked, headers=headers)
    metrics.retried(tier)
    return due


async def until_due(record: dict[str, Any]) -> bool:
    """Waits for the record's `not_before` (True), or until the worker stops taking messages
    for a rebalance (False: the caller parks the record again). Holding the partition is the
    point: everything behind it in this tier is due no earlier (± the tier's span)."""
    while (wait_ms := (record.get("not_before") or 0) - now_ms()) > 0:
        if not app.flow_control.is_active():
            return False
        await asyncio.sleep(min(wait_ms / 1000, HANDOVER_POLL_SECONDS))
    return True


async def hand_over(source: str, event: EventT, record: dict[str, Any], stage: str) -> None:
    """Parks a record that is not due yet back on its tier topic for the partition's next
    owner; acknowledging it then lets the rebalance go on. A crash between the two leaves
    both copies: the deliver stage's `delivered` table keeps the send single."""
    await topics.sink(source).send(key=event.key, value=record, headers=outgoing_headers(event))
    metrics.processed(stage, "handed_over")


def register_release_agent(
    source: str,
    name: str,
    stage: str,
    release: Callable[[EventT, str], Awaitable[None]],
) -> None:
    """One agent per retry tier topic, one event at a time (in order, per partition).
    `release(event, source)` forwards the event when due, or hands it over."""

    async def handle(event: EventT) -> None:
        await release(event, source)

    async def run(stream: StreamT) -> None:
        async for event in stream.events():
            await guarded(stage, event, handle)
            await asyncio.sleep(0)  # see streams/runtime/lane_agents.py

    run.__name__ = run.__qualname__ = name.replace("-", "_")
    app.agent(topics.source(source), name=name, concurrency=1)(run)


async def release(event: EventT, source: str) -> None:
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    if not await until_due(notification):
        await hand_over(source, event, notification, STAGE)
        return
    target = delivery_topic(notification["channel"], lane_of(notification))
    await topics.sink(target).send(
        key=event.key, value=notification, headers=outgoing_headers(event)
    )
    metrics.processed(STAGE, "released", notification["occurred_at"])


# Retries are released once, by the transactional workers (the bulk lane's deliver stage
# parks here too; the released notification goes back to its own lane's topic).
if runs_stage_feeders(settings):
    for _tier, _ in TIERS:
        register_release_agent(f"notifications.retry.{_tier}", f"retry-{_tier}", STAGE, release)
