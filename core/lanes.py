"""Priority lanes: transactional and alert traffic never queues behind marketing and bulk.

Each stage topic has a bulk twin (`notifications.accepted` and `notifications.accepted.bulk`,
…), and each stage runs one agent per lane, so a 100k blast fills the bulk topics while a
password reset goes through the transactional ones. A notification keeps its lane for life
(the `lane` field), through deferral, digests and retries.

A request is bulk when it arrives on `notifications.requests.bulk`, has priority `low`, or
has category `marketing`. Producers (the shim, batches, triggers, upstream services) pick
the request topic with `request_topic`.
"""

from __future__ import annotations

from typing import Any, Literal

Lane = Literal["transactional", "bulk"]
LANES: tuple[Lane, ...] = ("transactional", "bulk")
BULK_SUFFIX = ".bulk"


def lane_of_request(request: dict[str, Any], source_topic: str | None = None) -> Lane:
    if source_topic is not None and source_topic.endswith("notifications.requests" + BULK_SUFFIX):
        return "bulk"
    if request.get("priority") == "low" or request.get("category") == "marketing":
        return "bulk"
    return "transactional"


def lane_of(notification: dict[str, Any]) -> Lane:
    return "bulk" if notification.get("lane") == "bulk" else "transactional"


def lane_topic(logical: str, lane: Lane) -> str:
    """The logical topic of `logical` (a transactional-lane name) in `lane`."""
    return logical + BULK_SUFFIX if lane == "bulk" else logical


def request_topic(request: dict[str, Any]) -> str:
    """Where a producer should send a NotificationRequest."""
    return lane_topic("notifications.requests", lane_of_request(request))


def delivery_topic(channel: str, lane: Lane) -> str:
    return lane_topic(f"notifications.deliver.{channel}", lane)
