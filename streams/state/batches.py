"""Batch stage: create, append chunks to, close and cancel batches.

notifications.batches (BatchCommand, keyed batch_id) -> notifications.requests (each request
of an accepted chunk, with batch_id and a derived request_id) and notifications.batch-events.
Table `batches`: batch_id -> the batch; batch_id#command_id -> a command already applied.

The status stage's batch agent reads and writes the same table (completion): its input,
notifications.status.by-batch, is keyed batch_id and co-partitioned with
notifications.batches, so both agents see a batch in the same partition. Neither awaits
between reading a batch and writing it back.
"""

from __future__ import annotations

import hmac
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from faust.types import EventT, StreamT

from core.ids import recipient_key
from core.lanes import request_topic
from core.lifecycle import FINAL_STATUSES
from streams.batch_client import request_id_for
from streams.runtime import metrics
from streams.runtime.app import app, table, topics
from streams.runtime.events import (
    Rejected,
    dead_letter,
    decode_or_dead_letter,
    guarded,
    now_ms,
    outgoing_headers,
)
from streams.state.fanout import fan_out

STAGE = "batches"
_NAMESPACE = uuid.UUID("0c0f2f6e-0d8b-4a51-9f6b-6a1c1de2a7b3")

batches = table("batches")
# The status stage's per-batch counters, in the same partition as the batch (see above):
# f"{batch_id}#{shard}" -> {"members": {nid: [status, rank]}, "counts": {status: n}, "final": n}
batch_state = table("batch-state")
BATCH_SHARDS = 16

OPEN, CLOSED, CANCELLED = "open", "closed", "cancelled"


# -- pure rules -----------------------------------------------------------------------------


def token_matches(stored_sha256: str, given_sha256: str) -> bool:
    return hmac.compare_digest(stored_sha256.encode(), given_sha256.encode())


def command_rejection(batch: dict[str, Any] | None, command: dict[str, Any]) -> str | None:
    """Why a command (other than create) may not touch the batch, or None."""
    if batch is None:
        return f"unknown batch {command['batch_id']}"
    if command["tenant_id"] != batch["tenant_id"]:
        return f"wrong tenant: the batch belongs to another tenant than {command['tenant_id']}"
    if not token_matches(batch["token_sha256"], command["token_sha256"]):
        return "bad token"
    if batch["state"] == CANCELLED:
        return "batch is cancelled"
    if batch["state"] == CLOSED and command["kind"] in ("append", "close"):
        return "batch is closed"
    return None


def chunk_rejection(batch: dict[str, Any], requests: list[dict[str, Any]]) -> str | None:
    for index, request in enumerate(requests):
        if request["tenant_id"] != batch["tenant_id"]:
            return f"requests[{index}].tenant_id: {request['tenant_id']!r} is not the batch's"
    return None


def expected_total(batch: dict[str, Any] | None) -> int | None:
    """The notifications the batch will hold, once known: as declared, else fixed at close."""
    if batch is None:
        return None
    if batch.get("total_expected") is not None:
        return int(batch["total_expected"])
    if batch["state"] in (CLOSED, CANCELLED) and batch.get("closed_with") is not None:
        return int(batch["closed_with"])
    return None


def is_complete(batch: dict[str, Any] | None, final_members: int) -> bool:
    """Complete when every expected notification reached a final state (never twice)."""
    expected = expected_total(batch)
    return (
        batch is not None
        and not batch.get("completed")
        and expected is not None
        and final_members >= expected
    )


def forwarded_requests(batch_id: str, command: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunk's requests as the request stage gets them: batch id and derived ids set."""
    return [
        {**request, "batch_id": batch_id, "request_id": request_id_for(batch_id, cid, index)}
        for cid in (command["command_id"],)
        for index, request in enumerate(command["requests"])
    ]


def notification_count(requests: list[dict[str, Any]]) -> int:
    """Distinct recipient x channel per request: what the request stage will fan out."""
    return sum(len(fan_out(request, request["request_id"])) for request in requests)


def event_id(batch_id: str, event_type: str, command_id: str | None = None) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{batch_id}:{event_type}:{command_id or ''}"))


# -- effects --------------------------------------------------------------------------------


async def emit_batch_event(
    batch_id: str,
    tenant_id: str,
    event_type: str,
    *,
    batch: dict[str, Any] | None,
    headers: dict[str, bytes] | None = None,
    command_id: str | None = None,
    reason: str | None = None,
    counts: dict[str, int] | None = None,
) -> None:
    record = {
        "event_id": event_id(batch_id, event_type, command_id),
        "event_type": event_type,
        "batch_id": batch_id,
        "tenant_id": tenant_id,
        # Every event after a cancel says so: the replicated view keeps only the latest.
        "cancelled": bool(batch and batch["state"] == CANCELLED),
        "total_expected": expected_total(batch),
        "counts": counts or {},
        "command_id": command_id,
        "reason": reason,
        "occurred_at": now_ms(),
    }
    metrics.processed(STAGE, event_type)
    await topics.sink("notifications.batch-events").send(
        key=batch_id, value=record, headers=headers or {}
    )


def _applied_key(batch_id: str, command_id: str) -> str:
    return f"{batch_id}#{command_id}"


def already_applied(command: dict[str, Any]) -> bool:
    return batches.get(_applied_key(command["batch_id"], command["command_id"])) is not None


async def handle_create(command: dict[str, Any], headers: dict[str, bytes]) -> None:
    batch_id, command_id = command["batch_id"], command["command_id"]
    existing = batches.get(batch_id)
    if existing is not None and existing.get("created_by") != command_id:
        await emit_batch_event(
            batch_id,
            command["tenant_id"],
            "batch.command_rejected",
            batch=existing if existing["tenant_id"] == command["tenant_id"] else None,
            headers=headers,
            command_id=command_id,
            reason="batch already exists",
        )
        return
    total = command["total_expected"]
    if existing is None:
        batches[batch_id] = {
            "tenant_id": command["tenant_id"],
            "token_sha256": command["token_sha256"],
            "total_expected": total if total is not None and total >= 0 else None,
            "appended": 0,
            "state": OPEN,
            "created_by": command_id,
            "created_at": now_ms(),
            "completed": False,
        }
    await emit_batch_event(
        batch_id,
        command["tenant_id"],
        "batch.created",
        batch=batches[batch_id],
        headers=headers,
        command_id=command_id,
    )


async def _reject(
    command: dict[str, Any],
    batch: dict[str, Any] | None,
    event_type: str,
    reason: str,
    headers: dict[str, bytes],
) -> None:
    """A rejection event; the batch's counts are shown only to the tenant that owns it."""
    owned = batch is not None and batch["tenant_id"] == command["tenant_id"]
    await emit_batch_event(
        command["batch_id"],
        command["tenant_id"],
        event_type,
        batch=batch if owned else None,
        headers=headers,
        command_id=command["command_id"],
        reason=reason,
    )


async def handle_append(command: dict[str, Any], headers: dict[str, bytes]) -> None:
    batch_id, command_id = command["batch_id"], command["command_id"]
    batch = batches.get(batch_id)
    reason = command_rejection(batch, command)
    if reason is None and batch is not None:
        reason = chunk_rejection(batch, command["requests"])
    if reason is not None:
        await _reject(command, batch, "batch.chunk_rejected", reason, headers)
        return
    requests = forwarded_requests(batch_id, command)
    count = notification_count(requests)
    for request in requests:
        recipients = request["recipients"]
        key = recipient_key(request["tenant_id"], recipients[0]["user_id"] if recipients else "")
        await topics.sink(request_topic(request)).send(key=key, value=request, headers=headers)
    # Forwarded first, recorded after: a crash in between replays the command, which
    # forwards the same request ids again (harmless downstream) and counts it once.
    # No await between reading the batch and writing it back.
    batch = batches[batch_id]
    batch = batches[batch_id] = {**batch, "appended": batch["appended"] + count}
    batches[_applied_key(batch_id, command_id)] = {"at": now_ms(), "notifications": count}
    await emit_batch_event(
        batch_id,
        batch["tenant_id"],
        "batch.chunk_accepted",
        batch=batch,
        headers=headers,
        command_id=command_id,
        counts={"chunk": count, "appended": batch["appended"]},
    )


async def handle_close_or_cancel(command: dict[str, Any], headers: dict[str, bytes]) -> None:
    batch_id, command_id, kind = command["batch_id"], command["command_id"], command["kind"]
    batch = batches.get(batch_id)
    # The same command replayed after a crash before it was marked applied: the state
    # changed already, the event may not have gone out. Emit it again (same event id).
    replay = batch is not None and batch.get("changed_by") == command_id
    reason = None if replay else command_rejection(batch, command)
    if reason is not None:
        await _reject(command, batch, "batch.command_rejected", f"{kind}: {reason}", headers)
        return
    assert batch is not None
    if not replay:
        closed_with = batch.get("closed_with")
        batch = batches[batch_id] = {
            **batch,
            "state": CANCELLED if kind == "cancel" else CLOSED,
            "closed_with": batch["appended"] if closed_with is None else closed_with,
            "changed_by": command_id,
        }
    event_type = "batch.cancelled" if kind == "cancel" else "batch.closed"
    await emit_batch_event(
        batch_id,
        batch["tenant_id"],
        event_type,
        batch=batch,
        headers=headers,
        command_id=command_id,
        counts=batch_summary(batch_id).counts if kind == "cancel" else None,
    )
    batches[_applied_key(batch_id, command_id)] = {"at": now_ms()}
    # Every member may already be final: nothing else would complete the batch.
    await check_completion(batch_id, headers)


# -- counters and completion (written by the status stage, read here on close/cancel) --------


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


@dataclass
class BatchSummary:
    counts: dict[str, int] = field(default_factory=dict)  # members per latest status
    members: int = 0
    final: int = 0  # members in a final state (core.lifecycle.FINAL_STATUSES)


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


HANDLERS = {
    "create": handle_create,
    "append": handle_append,
    "close": handle_close_or_cancel,
    "cancel": handle_close_or_cancel,
}


async def handle(event: EventT) -> None:
    command = await decode_or_dead_letter(event, "BatchCommand", STAGE)
    if command is None:
        return
    if event.key != command["batch_id"]:
        # Elsewhere, the batch would be invisible to the status stage's completion check.
        error = Rejected(f"key {event.key!r}: batch commands are keyed by their batch_id")
        await dead_letter(event, stage=STAGE, error=error, tenant_id=command["tenant_id"])
        return
    if command["kind"] != "create" and already_applied(command):
        # A replay or a resend: its requests were forwarded and counted the first time.
        metrics.processed(STAGE, "duplicate_command")
        return
    await HANDLERS[command["kind"]](command, outgoing_headers(event))


@app.agent(topics.source("notifications.batches"), concurrency=1)
async def process_batch_commands(stream: StreamT) -> None:
    async for event in stream.events():
        await guarded(STAGE, event, handle)
