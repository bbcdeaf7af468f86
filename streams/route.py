"""Stage 4, route: publish each notification to its channel's delivery topic.

notifications.rendered -> notifications.deliver.<channel>
Status: queued | failed (no delivery topic for the channel: not retriable).
"""

from __future__ import annotations

from faust.types import EventT, StreamT

from streams import metrics
from streams.app import app, catalog, topics
from streams.events import (
    decode_or_dead_letter,
    emit_status,
    guarded,
    outgoing_headers,
)

STAGE = "route"


def delivery_topic(channel: str) -> str | None:
    """The logical delivery topic for a channel, if topics.yaml declares one."""
    name = f"notifications.deliver.{channel}"
    try:
        catalog[name]
    except KeyError:
        return None
    return name


async def handle(event: EventT) -> None:
    headers = outgoing_headers(event)
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    target = delivery_topic(notification["channel"])
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
    await topics.sink(target).send(key=event.key, value=notification, headers=headers)
    metrics.processed(STAGE, "queued", notification["occurred_at"])


@app.agent(topics.source("notifications.rendered"), concurrency=1)
async def route_notifications(stream: StreamT) -> None:
    async for event in stream.events():
        await guarded(STAGE, event, handle)
