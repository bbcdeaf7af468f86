"""Stage 6, status: latest state per notification and per-batch counters.

notifications.status (keyed notification_id) -> `notification-state` table
  -> notifications.status.by-batch (keyed batch_id) -> `batch-state` table

Both are derived only from status events, and both are idempotent: a state moves only to a
higher-ranked status (core.lifecycle), so replays and late events change nothing. Batch
counters are exact because each shard of a batch stores its members' states next to its
counts and is written as one value: there is no moment where one is updated and not the
other.

A created batch (streams.state.batches) belongs to one tenant: another tenant's notifications
carrying its id (a request published straight to Kafka) never move its counters or complete
it early. A batch id that was never created is an upstream producer's ad-hoc label: its
statuses are counted, it has no owner and it never completes (no expected total).

The status events and the receipts (same key, same partition numbers) are read by one
batched loop (streams/runtime/batch_loop.py), not Faust agents: at four status events per
notification this stage was the pipeline's busiest consumer. The loop also runs the status
webhooks' dispatch (streams/webhooks/agents.py) on each event it has decoded. The batch
counters stay a Faust agent, co-partitioned with the batch stage's `batches` table.

Batch completion: once a batch's expected total is known (streams.state.batches) and that many
members are final, `batch.completed` goes to notifications.batch-events, once. See
docs/batches.md.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Message
from faust.types import EventT, StreamT

from core.lifecycle import rank
from streams.runtime.app import app, topics
from streams.runtime.batch_loop import Context
from streams.runtime.events import decode_or_dead_letter, guarded, outgoing_headers
from streams.runtime.loop_stage import JsonTable, decode, headers_of, produce
from streams.state.batches import (
    apply_member,
    batch_state,
    batch_summary,
    batches,
    check_completion,
    expected_total,
    shard_key,
)
from streams.webhooks.agents import dispatch as dispatch_webhooks

STAGE = "status"
log = logging.getLogger(__name__)

# notification_id -> latest state worth keeping across a restart: final, deferred, or a
# retriable failure (each may be read long after). The passing states (accepted, rendered,
# queued) are gone in milliseconds; they are kept in memory only (`_passing`), which saves
# three changelog writes per notification (a third of all messages it caused before).
notification_state = JsonTable("notification-state")
_passing: dict[str, dict[str, Any]] = {}
PASSING_STATUSES = frozenset({"accepted", "rendered", "queued"})
MAX_PASSING = 200_000  # a bound for partitions revoked mid-flight (their final never comes here)


def _newer(event: dict[str, Any], current: dict[str, Any] | None) -> bool:
    return current is None or rank(event["status"], event["retriable"]) > current["rank"]


def state_of(nid: str, partition: int | None = None) -> dict[str, Any] | None:
    """The notification's latest state: the table's, or a newer passing one in memory.
    `partition`: the notification's (known while handling its messages); None looks in
    every partition this worker holds."""
    kept = (
        notification_state.find(nid)
        if partition is None
        else notification_state.get(partition, nid)
    )
    passing = _passing.get(nid)
    if passing is not None and (kept is None or passing["rank"] > kept["rank"]):
        return passing
    return kept


async def handle_status(message: Message, context: Context) -> None:
    status = decode(message, "StatusEvent")
    nid, partition = status["notification_id"], message.partition() or 0
    current = state_of(nid, partition)
    if _newer(status, current):
        state = {
            "status": status["status"],
            "rank": rank(status["status"], status["retriable"]),
            "reason": status["reason"],
            "tenant_id": status["tenant_id"],
            "batch_id": status["batch_id"],
            "updated_at": status["occurred_at"],
            # What a receipt's status event needs (streams/receipts.py).
            "request_id": status["request_id"],
            "channel": status["channel"],
            "recipient_id": status["recipient_id"],
            "request_occurred_at": status["request_occurred_at"],
        }
        if status["status"] in PASSING_STATUSES:
            _passing[nid] = state
            if len(_passing) > MAX_PASSING:
                del _passing[next(iter(_passing))]
        else:
            notification_state.put(partition, nid, state)
            _passing.pop(nid, None)
    headers = headers_of(message)
    if status["batch_id"]:
        await produce(context, "notifications.status.by-batch", status["batch_id"], status, headers)
    await dispatch_webhooks(status, message, context)


async def handle_batch_status(event: EventT) -> None:
    status = await decode_or_dead_letter(event, "StatusEvent", f"{STAGE}:batch")
    if status is None:
        return
    batch_id = status["batch_id"]
    batch = batches.get(batch_id)
    if batch is not None and batch["tenant_id"] != status["tenant_id"]:
        log.warning(
            "status of %s (tenant %s) names batch %s of another tenant: not counted",
            status["notification_id"],
            status["tenant_id"],
            batch_id,
        )
        return
    key = shard_key(batch_id, status["notification_id"])
    new_rank = rank(status["status"], status["retriable"])
    # No await between the read and the write: the shard is one value.
    shard = apply_member(
        batch_state.get(key), status["notification_id"], status["status"], new_rank
    )
    if shard is not None:
        batch_state[key] = shard
    await check_completion(batch_id, outgoing_headers(event))


@app.agent(topics.source("notifications.status.by-batch"), concurrency=1)
async def track_batches(stream: StreamT) -> None:
    async for event in stream.events():
        await guarded(STAGE, event, handle_batch_status)


# Read-only views of this worker's tables, on its web server (WORKER_WEB_PORT). With several
# workers, ask the one that owns the partition (Faust's table_route would forward, but fails
# for a topic its producer has not written to yet).
@app.page("/batches/{batch_id}/")
async def batch_progress(web: Any, request: Any, batch_id: str) -> Any:
    summary = batch_summary(batch_id)
    batch = batches.get(batch_id) or {}
    return web.json(
        {
            "batch_id": batch_id,
            "total": summary.members,
            "final": summary.final,
            "counts": summary.counts,
            "expected": expected_total(batch or None),
            "appended": batch.get("appended"),
            "state": batch.get("state"),
            "completed": bool(batch.get("completed")),
        }
    )


@app.page("/notifications/{notification_id}/")
async def notification_progress(web: Any, request: Any, notification_id: str) -> Any:
    state = state_of(notification_id)
    if state is None:
        return web.json({"error": "not found"}, status=404)
    return web.json({"notification_id": notification_id, **state})
