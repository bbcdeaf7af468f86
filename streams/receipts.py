"""Provider receipts -> status events: `delivered`, `bounced`, `failed`, `read`, once each.

notifications.receipts (ProviderReceipt, keyed notification_id) -> notifications.status

Receipts come from providers' delivery reports, parsed by each connector module's
`parse_receipts` (the shim's inbound webhooks produce them). They are keyed like the status
topic, so a notification's receipts and its `notification-state` entry are in the same
partition: the receipt is checked against the notification (it must exist and belong to the
receipt's tenant), deduplicated on the provider's event id, and becomes a status event whose
id derives from that event id. The status stage's ranking then decides whether it changes the
latest state (a `bounced` after `delivered` does; a late `delivered` after `read` does not).
Receipts are read by the status stage's batched loop (streams/stages/status.py), which
calls `handle` for each.
"""

from __future__ import annotations

from confluent_kafka import Message

from core.ids import status_event_id
from streams.runtime import metrics
from streams.runtime.app import settings
from streams.runtime.batch_loop import Context
from streams.runtime.events import Rejected, now_ms
from streams.runtime.loop_stage import (
    JsonTable,
    child_headers,
    decode,
    key_text,
    produce,
    sweep_expired,
)
from streams.stages.status import state_of

STAGE = "receipt"
RECEIPT_STATUSES = frozenset({"delivered", "bounced", "failed", "read"})

# f"{tenant}:{notification_id}:{provider}:{provider_event_id}" -> {"at": ms, "partition": n}.
# Scoped to the notification: a tenant with its own provider account cannot block another
# tenant's receipt by sending one with the same provider event id first.
receipts_seen = JsonTable("receipts-seen")
_TTL_MS = settings.delivered_ttl_seconds * 1000
SWEEP_INTERVAL_MS = 60_000
_last_sweep: dict[int, int] = {}


async def handle(message: Message, context: Context) -> None:
    receipt = decode(message, "ProviderReceipt")
    nid, partition = receipt["notification_id"], message.partition() or 0
    state = state_of(nid, partition)
    problem = None
    if receipt["status"] not in RECEIPT_STATUSES:
        problem = f"a receipt cannot say {receipt['status']!r}"
    elif state is None:
        problem = f"no notification {nid!r}"
    elif receipt["tenant_id"] and receipt["tenant_id"] != state["tenant_id"]:
        problem = f"notification {nid!r} is not tenant {receipt['tenant_id']!r}'s"
    if problem is not None:
        raise Rejected(problem)  # dead-lettered by the loop
    assert state is not None
    provider_event = f"{receipt['provider']}:{receipt['provider_event_id']}"
    seen_key = f"{state['tenant_id']}:{nid}:{provider_event}"
    if receipts_seen.get(partition, seen_key) is not None:
        metrics.processed(STAGE, "duplicate")
        return
    record = {
        "event_id": status_event_id(nid, receipt["status"], 0, provider_event),
        "notification_id": nid,
        "request_id": state.get("request_id") or "",
        "tenant_id": state["tenant_id"],
        "batch_id": state.get("batch_id"),
        "channel": state.get("channel"),
        "recipient_id": state.get("recipient_id"),
        "status": receipt["status"],
        "reason": receipt["reason"],
        "retriable": False,
        "provider": receipt["provider"],
        "provider_message_id": receipt["provider_message_id"],
        "stage": STAGE,
        "attempt": 0,
        "deferred_until": None,
        "request_occurred_at": state.get("request_occurred_at") or receipt["occurred_at"],
        "occurred_at": receipt["occurred_at"],
    }
    headers = child_headers(message)
    await produce(context, "notifications.status", key_text(message), record, headers)
    # Written in the same batch: its changelog write is acknowledged before the receipt's
    # offset is committed, as the status event is.
    now = now_ms()
    receipts_seen.put(partition, seen_key, {"at": now, "partition": partition})
    if now - _last_sweep.setdefault(partition, now) >= SWEEP_INTERVAL_MS:
        _last_sweep[partition] = now
        sweep_expired(receipts_seen, partition, now, _TTL_MS)
    metrics.processed(STAGE, receipt["status"])
