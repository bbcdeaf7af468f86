"""Stage 4, route: publish each notification to its channel's delivery topic, in its lane.

(render, in the same consumer) -> notifications.deliver.<channel>[.bulk]
Status: queued | failed (no delivery topic for the channel: not retriable).

Route runs as a step of the enrich consumer (`route_step`, called by render): same key,
same partition, so a topic hop in between only cost messages. The agent on
notifications.rendered[.bulk] stays for records written there before, or by a replay.
"""

from __future__ import annotations

from typing import Any

from faust.types import EventT

from core.lanes import Lane, delivery_topic, lane_of
from streams.runtime import metrics
from streams.runtime.app import catalog, topics
from streams.runtime.events import decode_or_dead_letter, emit_status, outgoing_headers
from streams.runtime.lane_agents import lane_agents

STAGE = "route"


def target_topic(channel: str, lane: Lane) -> str | None:
    """The logical delivery topic for a channel and lane, if topics.yaml declares one."""
    name = delivery_topic(channel, lane)
    try:
        catalog[name]
    except KeyError:
        return None
    return name


async def handle(event: EventT) -> None:
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    await route_step(notification, event.key, outgoing_headers(event))


async def route_step(notification: dict[str, Any], key: Any, headers: dict[str, bytes]) -> None:
    target = target_topic(notification["channel"], lane_of(notification))
    if target is None:
        await emit_status(
            notification,
            "failed",
            stage=STAGE,
            headers=headers,
            reason=f"no provider is configured for the {notification['channel']} channel",
        )
        metrics.processed(STAGE, "unroutable", notification["occurred_at"])
        return
    await emit_status(notification, "queued", stage=STAGE, headers=headers)
    await topics.sink(target).send(key=key, value=notification, headers=headers)
    metrics.processed(STAGE, "queued", notification["occurred_at"])


lane_agents("notifications.rendered", STAGE, handle)
