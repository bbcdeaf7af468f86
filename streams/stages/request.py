"""Stage 1, request: validate, assign ids, drop duplicates, fan out recipient x channel.

notifications.requests (NotificationRequest) -> notifications.accepted (Notification)
Status: accepted | duplicate | failed (invalid request).

A notification whose key (tenant:recipient) falls in the request's own partition, as the
first recipient's does when requests are keyed by it (the shim, the docs), goes straight to
enrich in this consumer (`enrich_step`): topics with equal partition counts are assigned
together, so its recipient's tables are here. The others cross notifications.accepted.
"""

from __future__ import annotations

import json
from typing import Any

from faust.types import EventT

from core import tracing
from core.ids import expected_partition, recipient_key, request_id_from_position
from core.lanes import lane_of_request, lane_topic
from streams.runtime import metrics
from streams.runtime.app import settings, table, topics
from streams.runtime.events import (
    Rejected,
    dead_letter,
    decode_or_dead_letter,
    emit_status,
    now_ms,
    outgoing_headers,
)
from streams.runtime.lane_agents import lane_agents
from streams.stages.enrich import enrich_step
from streams.state.expiry import Sweeper, is_live
from streams.state.fanout import fan_out

STAGE = "request"
MAX_FAN_OUT = 10_000

# tenant_id:idempotency_key -> {"request_id", "at", "partition"}
idempotency_keys = table("idempotency")
_ttl_ms = settings.idempotency_ttl_seconds * 1000
_sweeper = Sweeper(idempotency_keys, _ttl_ms)


def validate(request: dict[str, Any]) -> None:
    """Checks beyond what the Avro schema enforces. Raises Rejected naming the field."""
    if not request["tenant_id"].strip():
        raise Rejected("tenant_id: must not be empty")
    if not request["recipients"]:
        raise Rejected("recipients: at least one recipient is required")
    for index, recipient in enumerate(request["recipients"]):
        if not recipient["user_id"].strip():
            raise Rejected(f"recipients[{index}].user_id: must not be empty")
    if not request["channels"]:
        raise Rejected("channels: at least one channel is required")
    content = request.get("content") or {}
    if not request.get("template_id") and not any(content.values()):
        raise Rejected("template_id or content: one of them is required")
    try:
        data = json.loads(request["data_json"])
    except ValueError as exc:
        raise Rejected(f"data_json: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise Rejected("data_json: must be a JSON object")
    version = request.get("template_version")
    if version is not None and (version < 1 or not request.get("template_id")):
        raise Rejected("template_version: a positive version, and only with template_id")
    if len(request["recipients"]) * len(request["channels"]) > MAX_FAN_OUT:
        raise Rejected(f"recipients x channels: more than {MAX_FAN_OUT} notifications")


def claim_idempotency_key(request: dict[str, Any], request_id: str, partition: int) -> str | None:
    """Record the key for this request; return the earlier request's id if it is a duplicate.

    The same request replayed (same request_id) is not a duplicate: at-least-once
    processing may see it twice, and must then produce the same output again.
    """
    key = request.get("idempotency_key")
    if not key:
        return None
    table_key = f"{request['tenant_id']}:{key}"
    now = now_ms()
    entry = idempotency_keys.get(table_key)
    if is_live(entry, now, _ttl_ms) and entry["request_id"] != request_id:
        return str(entry["request_id"])
    if entry is None or entry["request_id"] != request_id:
        idempotency_keys[table_key] = {"request_id": request_id, "at": now, "partition": partition}
    return None


async def handle(event: EventT) -> None:
    headers = outgoing_headers(event)
    request = await decode_or_dead_letter(event, "NotificationRequest", STAGE)
    if request is None:
        return
    message = event.message
    request_id = request.get("request_id") or request_id_from_position(
        message.topic, message.partition, message.offset
    )
    try:
        validate(request)
        size = len(message.value or b"")
        if size > settings.request_max_bytes:
            raise Rejected(
                f"request: {size} bytes, over REQUEST_MAX_BYTES={settings.request_max_bytes}"
            )
    except Rejected as exc:
        await dead_letter(event, stage=STAGE, error=exc, tenant_id=request["tenant_id"])
        # Where ids can be derived, the caller can see why nothing was sent.
        for notification in fan_out(request, request_id):
            await emit_status(notification, "failed", stage=STAGE, headers=headers, reason=str(exc))
        return

    lane = lane_of_request(request, message.topic)
    notifications = fan_out(request, request_id, lane)
    earlier = claim_idempotency_key(request, request_id, message.partition)
    _sweeper.maybe_sweep(message.partition, now_ms())
    if earlier is not None:
        for notification in notifications:
            await emit_status(
                notification,
                "duplicate",
                stage=STAGE,
                headers=headers,
                reason=f"idempotency key already used by request {earlier}",
            )
        metrics.processed(STAGE, "duplicate", request["occurred_at"])
        return

    accepted = topics.sink(lane_topic("notifications.accepted", lane))
    for notification in notifications:
        await emit_status(notification, "accepted", stage=STAGE, headers=headers)
        key = recipient_key(notification["tenant_id"], notification["recipient"]["user_id"])
        if expected_partition(key, accepted.partitions) == message.partition:
            # Its recipient's tables are this partition's: enrich it here, not one hop on.
            await enrich_step(notification, key, tracing.child_headers(headers))
        else:
            await accepted.send(key=key, value=notification, headers=headers)
    metrics.processed(STAGE, "accepted", request["occurred_at"])


lane_agents("notifications.requests", STAGE, handle)
