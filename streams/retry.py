"""Retry topics: notifications wait here, not in the deliver agent, for their next attempt.

deliver -> notifications.retry.<tier> -> (at not_before) -> notifications.deliver.<channel>[.bulk]

A notification goes to the tier whose span holds its wait: `short` (< 10 s), `medium`
(< 2 min), `long`. Each tier's agent waits for the head of each partition's queue, then
forwards it to its delivery topic. Waits within a tier are of the same order, so a message
is held behind another by at most about the tier's span: the reason for tiers rather than
one topic. Rate-limited notifications wait here too, for a token, with no attempt counted.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import EventT, StreamT

from streams import metrics
from streams.app import app, settings, topics
from streams.events import decode_or_dead_letter, guarded, now_ms, outgoing_headers
from streams.lanes import delivery_topic, lane_of
from streams.parts import runs_stage_feeders

STAGE = "retry"
TIERS: tuple[tuple[str, float], ...] = (("short", 10.0), ("medium", 120.0), ("long", float("inf")))


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
    topic = f"notifications.retry.{tier_for(wait_seconds)}"
    await topics.sink(topic).send(key=key, value=parked, headers=headers)
    return due


async def until_due(record: dict[str, Any]) -> None:
    """Waits for the record's `not_before`. Holding the partition is the point: everything
    behind it in this tier is due no earlier (± the tier's span)."""
    wait_ms = (record.get("not_before") or 0) - now_ms()
    if wait_ms > 0:
        await asyncio.sleep(wait_ms / 1000)


def register_release_agent(
    source: str, name: str, stage: str, release: Callable[[EventT], Awaitable[None]]
) -> None:
    """One agent per retry tier topic, one event at a time (in order, per partition)."""

    async def run(stream: StreamT) -> None:
        async for event in stream.events():
            await guarded(stage, event, release)
            await asyncio.sleep(0)  # see streams/lane_agents.py

    run.__name__ = run.__qualname__ = name.replace("-", "_")
    app.agent(topics.source(source), name=name, concurrency=1)(run)


async def release(event: EventT) -> None:
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    await until_due(notification)
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
