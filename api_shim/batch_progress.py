"""A batch's progress: what the batch stage said about it and where its notifications are.

Two sources, both derived from topics:

- **notifications.batch-events**, followed by every shim process (`BatchEventsView`): the
  chunks the stage accepted (and the notifications they hold) or rejected, close, cancel and
  completion. Folded per tenant and batch: the stage reports a rejected command under the
  tenant that sent it, so one tenant's stray commands never show in another's batch.
- **the read model** the Postgres sink keeps: the latest status of every notification, counted
  per status for the batch (`notifications` by tenant_id, batch_id: an index).
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import State

from api_shim.batch_models import BatchProgress, Rejection
from api_shim.batch_registry import OPEN, later_state
from api_shim.errors import Unavailable
from api_shim.views import CompactedView, Record
from connectors.read_model import notifications
from core.lifecycle import FINAL_STATUSES

TOPIC = "notifications.batch-events"
MAX_REJECTIONS = 10


def _empty() -> dict[str, Any]:
    return {
        "state": OPEN,
        "expected": None,
        "appended": 0,
        "accepted": set(),
        "rejected": set(),
        "rejections": deque(maxlen=MAX_REJECTIONS),
        "completed": False,
    }


def fold(progress: dict[str, Any], event: Record) -> None:
    """Applies one BatchEvent. Replays carry the same command ids, so nothing counts twice."""
    kind, command_id = event["event_type"], event.get("command_id")
    if event.get("total_expected") is not None:
        progress["expected"] = event["total_expected"]
    if kind == "batch.chunk_accepted":
        progress["accepted"].add(command_id)
        progress["appended"] = max(progress["appended"], event["counts"].get("appended", 0))
    elif kind in ("batch.chunk_rejected", "batch.command_rejected"):
        if kind == "batch.chunk_rejected":
            progress["rejected"].add(command_id)
        entry = (command_id, event.get("reason"))
        if entry not in progress["rejections"]:
            progress["rejections"].append(entry)
    elif kind == "batch.closed":
        progress["state"] = later_state(progress["state"], "closed")
    elif kind == "batch.completed":
        progress["completed"] = True
    if event.get("cancelled") or kind == "batch.cancelled":
        progress["state"] = "cancelled"


class BatchEventsView(CompactedView):
    """`tenant:batch_id` -> the batch's progress as the batch stage reported it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress: dict[str, dict[str, Any]] = {}
        self._progress_lock = threading.Lock()

    def apply(self, key: str, record: Record | None) -> None:
        if record is None:
            return
        with self._progress_lock:
            progress_key = f"{record['tenant_id']}:{record['batch_id']}"
            fold(self._progress.setdefault(progress_key, _empty()), record)

    def get(self, key: str) -> Record | None:
        """A copy: the follower thread goes on folding into the original."""
        with self._progress_lock:
            found = self._progress.get(key)
            return copy.deepcopy(found) if found is not None else None


def status_counts(engine: Engine, tenant_id: str, batch_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(notifications.c.status, func.count())
            .where(notifications.c.tenant_id == tenant_id, notifications.c.batch_id == batch_id)
            .group_by(notifications.c.status)
        ).all()
    return {status: int(count) for status, count in rows}


async def batch_progress(state: State, record: dict[str, Any]) -> BatchProgress:
    """The progress of a batch the caller owns (`record`: its shim.batches record)."""
    tenant_id, batch_id = record["tenant_id"], record["batch_id"]
    reported = state.views[TOPIC].get(f"{tenant_id}:{batch_id}") or _empty()
    try:
        counts = await run_in_threadpool(status_counts, state.engine, tenant_id, batch_id)
    except SQLAlchemyError as exc:
        raise Unavailable("the read model database is unavailable") from exc
    upload = record.get("upload")
    return BatchProgress(
        batch_id=batch_id,
        state=later_state(record["state"], reported["state"]),  # type: ignore[arg-type]
        created_at=datetime.fromtimestamp(record["created_at"] / 1000, tz=UTC),
        upload_id=upload["upload_id"] if upload else None,
        total_expected=record["total_expected"],
        expected=reported["expected"]
        if reported["expected"] is not None
        else record["total_expected"],
        appended=reported["appended"],
        chunks_accepted=len(reported["accepted"]),
        chunks_rejected=len(reported["rejected"]),
        rejections=[Rejection(command_id=c, reason=r) for c, r in reported["rejections"]],
        counts=counts,
        notifications=sum(counts.values()),
        final=sum(n for status, n in counts.items() if status in FINAL_STATUSES),
        completed=reported["completed"],
    )
