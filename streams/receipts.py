"""Provider receipts -> status events: `delivered`, `bounced`, `failed`, `read`, once each.

notifications.receipts (ProviderReceipt, keyed notification_id) -> notifications.status

Receipts come from providers' delivery reports, parsed by each connector module's
`parse_receipts` (the shim's inbound webhooks produce them). They are keyed like the status
topic, so a notification's receipts and its `notification-state` entry are in the same
partition: the receipt is checked against the notification (it must exist and belong to the
receipt's tenant), deduplicated on the provider's event id, and becomes a status event whose
id derives from that event id. The status stage's ranking then decides whether it changes the
latest state (a `bounced` after `delivered` does; a late `delivered` after `read` does not).
"""

from __future__ import annotations

from faust.types import EventT, StreamT

from core.ids import status_event_id
from streams.runtime import metrics
from streams.runtime.app import app, settings, table, topics
from streams.runtime.events import Rejected, dead_letter, decode_or_dead_letter, guarded, now_ms
from streams.runtime.events import outgoing_headers as child_headers
from streams.stages.status import state_of
from streams.state.expiry import Sweeper

STAGE = "receipt"
RECEIPT_STATUSES = frozenset({"delivered", "bounced", "failed", "read"})

# f"{tenant}:{notification_id}:{provider}:{provider_event_id}" -> {"at": ms, "partition": n}.
# Scoped to the notification: a tenant with its own provider account cannot block another
# tenant's receipt by sending one with the same provider event id first.
receipts_seen = table("receipts-seen")
_sweeper = Sweeper(receipts_seen, settings.delivered_ttl_seconds * 1000)


async def handle(event: EventT) -> None:
    receipt = await decode_or_dead_letter(event, "ProviderReceipt", STAGE)
    if receipt is None:
        return
    nid = receipt["notification_id"]
    state = state_of(nid)
    problem = None
    if receipt["status"] not in RECEIPT_STATUSES:
        problem = f"a receipt cannot say {receipt['status']!r}"
    elif state is None:
        problem = f"no notification {nid!r}"
    elif receipt["tenant_id"] and receipt["tenant_id"] != state["tenant_id"]:
        problem = f"notification {nid!r} is not tenant {receipt['tenant_id']!r}'s"
    if problem is not None:
        await dead_letter(event, stage=STAGE, error=Rejected(problem), notification_id=nid)
        return
    assert state is not None
    provider_event = f"{receipt['provider']}:{receipt['provider_event_id']}"
    seen_key = f"{state['tenant_id']}:{nid}:{provider_event}"
    if seen_key in receipts_seen:
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
    await topics.sink("notifications.status").send(
        key=nid, value=record, headers=child_headers(event)
    )
    # Recorded after the send: a crash in between sends the same event id again.
    receipts_seen[seen_key] = {"at": now_ms(), "partition": event.message.partition}
    _sweeper.maybe_sweep(event.message.partition, now_ms())
    metrics.processed(STAGE, receipt["status"])


@app.agent(topics.source("notifications.receipts"), concurrency=1)
async def apply_receipts(stream: StreamT) -> None:
    async for event in stream.events():
        await guarded(STAGE, event, handle)
