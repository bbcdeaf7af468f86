"""Stage 6, status: latest state per notification and per-batch counters.

notifications.status (keyed notification_id) -> `notification-state` table
  -> notifications.status.by-batch (keyed batch_id) -> `batch-state` table

Both are derived only from status events, and both are idempotent: a state moves only to a
higher-ranked status (streams.lifecycle), so replays and late events change nothing. Batch
counters are exact because each shard of a batch stores its members' states next to its
counts and is written as one value: there is no moment where one is updated and not the
other.

A created batch (streams.batches) belongs to one tenant: another tenant's notifications
carrying its id (a request published straight to Kafka) never move its counters or complete
it early. A batch id that was never created is an upstream producer's ad-hoc label: its
statuses are counted, it has no owner and it never completes (no expected total).

Batch completion: once a batch's expected total is known (streams.batches) and that many
members are final, `batch.completed` goes to notifications.batch-events, once. See
docs/batches.md.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from faust.types import EventT, StreamT

from streams.app import app, table, topics
from streams.batches import batches, emit_batch_event, expected_total, is_complete
from streams.events import decode_or_dead_letter, guarded, now_ms, outgoing_headers
from streams.lifecycle import FINAL_STATUSES, rank

STAGE = "status"
BATCH_SHARDS = 16
log = logging.getLogger(__name__)

# notification_id -> latest state worth keeping across a restart: final, deferred, or a
# retriable failure (each may be read long after). The passing states (accepted, rendered,
# queued) are gone in milliseconds; they are kept in memory only (`_passing`), which saves
# three changelog writes per notification (a third of all messages it caused before).
notification_state = table("notification-state")
_passing: dict[str, dict[str, Any]] = {}
PASSING_STATUSES = frozenset({"accepted", "rendered", "queued"})
MAX_PASSING = 200_000  # a bound for partitions revoked mid-flight (their final never comes here)
# f"{batch_id}#{shard}" -> {"members": {nid: [status, rank]}, "counts": {status: n}, "final": n}
batch_state = table("batch-state")


def _newer(event: dict[str, Any], current: dict[str, Any] | None) -> bool:
    return current is None or rank(event["status"], event["retriable"]) > current["rank"]


def state_of(nid: str) -> dict[str, Any] | None:
    """The notification's latest state: the table's, or a newer passing one in memory."""
    kept, passing = notification_state.get(nid), _passing.get(nid)
    if passing is not None and (kept is None or passing["rank"] > kept["rank"]):
        return passing
    return kept


@notification_state.on_recover
async def _forget_passing() -> None:
    """After a rebalance this worker may own other partitions: passing states of the ones it
    lost would never be replaced by a final one here."""
    _passing.clear()


async def handle_status(event: EventT) -> None:
    status = await decode_or_dead_letter(event, "StatusEvent", STAGE)
    if status is None:
        return
    nid = status["notification_id"]
    current = state_of(nid)
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
            notification_state[nid] = state
            _passing.pop(nid, None)
    if status["batch_id"]:
        await topics.sink("notifications.status.by-batch").send(
            key=status["batch_id"], value=status, headers=event.headers
        )


def shard_key(batch_id: str, notification_id: str) -> str:
    return f"{batch_id}#{zlib.crc32(notification_id.encode()) % BATCH_SHARDS}"


def apply_member(
    shard: dict[str, Any] | None, nid: str, status: str, new_rank: int
) -> dict[str, Any] | None:
    """The shard with the member moved to `status`, or None when that changes nothing.

    Counts per status and the number of final members are kept next to the members, in
    the same value, so a batch's totals are a sum over its shards, not over its members.
    """
    shard = shard or {"members": {}}
    members = shard["members"]
    member = members.get(nid)
    if member is not None and new_rank <= member[1]:
        return None
    counts, final = shard_totals(shard)
    counts = Counter(counts)
    if member is not None:
        counts[member[0]] -= 1
        final -= member[0] in FINAL_STATUSES
        if not counts[member[0]]:
            del counts[member[0]]
    counts[status] += 1
    final += status in FINAL_STATUSES
    return {"members": {**members, nid: [status, new_rank]}, "counts": dict(counts), "final": final}


def shard_totals(shard: dict[str, Any]) -> tuple[dict[str, int], int]:
    """Counts per status and final members; derived from members for shards written before
    the counters existed."""
    if "counts" in shard:
        return shard["counts"], shard["final"]
    counts = Counter(status for status, _ in shard["members"].values())
    return dict(counts), sum(n for status, n in counts.items() if status in FINAL_STATUSES)


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


@dataclass
class BatchSummary:
    counts: dict[str, int] = field(default_factory=dict)  # members per latest status
    members: int = 0
    final: int = 0  # members in a final state (streams.lifecycle.FINAL_STATUSES)


def batch_summary(batch_id: str) -> BatchSummary:
    """Totals of a batch, summed over its shards: O(shards)."""
    summary = BatchSummary()
    counts: Counter[str] = Counter()
    for shard in range(BATCH_SHARDS):
        value = batch_state.get(f"{batch_id}#{shard}")
        if value:
            shard_counts, final = shard_totals(value)
            counts.update(shard_counts)
            summary.final += final
    summary.counts = dict(counts)
    summary.members = sum(counts.values())
    return summary


def batch_counts(batch_id: str) -> dict[str, int]:
    """Notifications of a batch per latest status."""
    return batch_summary(batch_id).counts


# Batches whose completion event is being sent by this process (see check_completion).
_completing: set[str] = set()


async def check_completion(batch_id: str, headers: dict[str, bytes]) -> None:
    """Emit batch.completed once every expected member is final; remember it in `batches`.

    Called by this stage after each of the batch's status events and by the batch stage on
    close/cancel, both from the batch's partition. The event is sent before the batch is
    marked: a crash in between replays it with the same event id, never loses it. The
    in-process guard stops the two agents from both sending it during that await.
    """
    batch = batches.get(batch_id)
    if batch is None or batch.get("completed") or batch_id in _completing:
        return
    summary = batch_summary(batch_id)
    if not is_complete(batch, summary.final):
        return
    _completing.add(batch_id)
    try:
        await emit_batch_event(
            batch_id,
            batch["tenant_id"],
            "batch.completed",
            batch=batch,
            headers=headers,
            counts={**summary.counts, "accepted": summary.members},
        )
        # Read again: the batch stage may have written the batch during the send.
        batches[batch_id] = {**batches[batch_id], "completed": True, "completed_at": now_ms()}
    finally:
        _completing.discard(batch_id)


@app.agent(topics.source("notifications.status"), concurrency=1)
async def track_status(stream: StreamT) -> None:
    async for event in stream.events():
        await guarded(STAGE, event, handle_status)


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
