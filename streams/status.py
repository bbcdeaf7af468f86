"""Stage 6, status: latest state per notification and per-batch counters.

notifications.status (keyed notification_id) -> `notification-state` table
  -> notifications.status.by-batch (keyed batch_id) -> `batch-state` table

Both are derived only from status events, and both are idempotent: a state moves only to a
higher-ranked status (streams.lifecycle), so replays and late events change nothing. Batch
counters are exact because each shard of a batch stores its members' states next to its
counts and is written as one value: there is no moment where one is updated and not the
other.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

from faust.types import EventT, StreamT

from streams.app import app, table, topics
from streams.events import decode_or_dead_letter, guarded
from streams.lifecycle import rank

STAGE = "status"
BATCH_SHARDS = 16

notification_state = table("notification-state")  # notification_id -> latest state
batch_state = table("batch-state")  # f"{batch_id}#{shard}" -> {"members": {nid: [status, rank]}}


def _newer(event: dict[str, Any], current: dict[str, Any] | None) -> bool:
    return current is None or rank(event["status"], event["retriable"]) > current["rank"]


async def handle_status(event: EventT) -> None:
    status = await decode_or_dead_letter(event, "StatusEvent", STAGE)
    if status is None:
        return
    nid = status["notification_id"]
    current = notification_state.get(nid)
    if _newer(status, current):
        notification_state[nid] = {
            "status": status["status"],
            "rank": rank(status["status"], status["retriable"]),
            "reason": status["reason"],
            "tenant_id": status["tenant_id"],
            "batch_id": status["batch_id"],
            "updated_at": status["occurred_at"],
        }
    if status["batch_id"]:
        await topics.sink("notifications.status.by-batch").send(
            key=status["batch_id"], value=status, headers=event.headers
        )


def shard_key(batch_id: str, notification_id: str) -> str:
    return f"{batch_id}#{zlib.crc32(notification_id.encode()) % BATCH_SHARDS}"


async def handle_batch_status(event: EventT) -> None:
    status = await decode_or_dead_letter(event, "StatusEvent", f"{STAGE}:batch")
    if status is None:
        return
    key = shard_key(status["batch_id"], status["notification_id"])
    shard = batch_state.get(key) or {"members": {}}
    member = shard["members"].get(status["notification_id"])
    new_rank = rank(status["status"], status["retriable"])
    if member is None or new_rank > member[1]:
        members = {**shard["members"], status["notification_id"]: [status["status"], new_rank]}
        batch_state[key] = {"members": members}


def batch_counts(batch_id: str) -> dict[str, int]:
    """Notifications of a batch per latest status, summed over its shards."""
    counts: Counter[str] = Counter()
    for shard in range(BATCH_SHARDS):
        value = batch_state.get(f"{batch_id}#{shard}")
        if value:
            counts.update(status for status, _ in value["members"].values())
    return dict(counts)


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
    counts = batch_counts(batch_id)
    return web.json({"batch_id": batch_id, "total": sum(counts.values()), "counts": counts})


@app.page("/notifications/{notification_id}/")
async def notification_progress(web: Any, request: Any, notification_id: str) -> Any:
    state = notification_state.get(notification_id)
    if state is None:
        return web.json({"error": "not found"}, status=404)
    return web.json({"notification_id": notification_id, **state})
