"""Which batches the shim created, for whom, with which token hash (shim.batches); and the
commands it sends the batch stage (notifications.batches).

The batch stage keeps its batches in worker tables the shim cannot read, and answers a bad
command only asynchronously (batch.chunk_rejected). To refuse a wrong token (403) or another
tenant's batch (404) before answering, the shim records every batch it creates on the
compacted topic shim.batches (tenant, the token's SHA-256, the state it commanded) and every
shim process follows that topic (api_shim.views). The stage stays the authority: a command
that passes here can still be refused there (a close racing an append through another shim
process), and the progress endpoint shows it.

The registry record is written before the create command: a batch the stage knows is always
known here, and a create retried with the record's hash is harmless (the stage applies a
command id once). A batch's state only moves forward (open -> closed -> cancelled), and the
view keeps it so: a write this process applied at once is not undone when the follower reads
an older record of the same batch back.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from typing import Any

from starlette.datastructures import State

from api_shim.errors import Conflict, Forbidden, NotFound
from api_shim.publish import publish
from api_shim.views import CompactedView, Record
from streams.batch_client import token_sha256

TOPIC = "shim.batches"
COMMANDS = "notifications.batches"
OPEN, CLOSED, CANCELLED = "open", "closed", "cancelled"
_RANK = {OPEN: 0, CLOSED: 1, CANCELLED: 2}


def now_ms() -> int:
    return int(time.time() * 1000)


def later_state(a: str, b: str) -> str:
    """Batches only move forward: open -> closed -> cancelled (cancel is allowed after close)."""
    return a if _RANK.get(a, 0) >= _RANK.get(b, 0) else b


class RegistryView(CompactedView):
    """shim.batches: batch_id -> its latest record; an older record read back is ignored and a
    batch's state never moves back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._order = threading.Lock()
        # (tenant, upload_id) -> batch_id: a retried upload finds (and resumes) its batch.
        self._uploads: dict[tuple[str, str], str] = {}

    def apply(self, key: str, record: Record | None) -> None:
        with self._order:
            current = self.get(key)
            if record is not None and current is not None:
                if current["updated_at"] > record["updated_at"]:
                    return
                record = {**record, "state": later_state(current["state"], record["state"])}
            super().apply(key, record)
            upload = (record or {}).get("upload")
            if record is not None and upload is not None:
                self._uploads[(record["tenant_id"], upload["upload_id"])] = key

    def upload_batch(self, tenant_id: str, upload_id: str) -> str | None:
        return self._uploads.get((tenant_id, upload_id))


def upload_batch_id(state: State, tenant_id: str, upload_id: str) -> str:
    """An upload's batch: the one a first attempt created (any shim process, once its view has
    read it), else a new random id. Never derived from the upload id: a tenant who knows or
    guesses another's upload id must not be able to compute that tenant's batch id."""
    view: RegistryView = state.views[TOPIC]
    return view.upload_batch(tenant_id, upload_id) or str(uuid.uuid4())


def new_record(
    batch_id: str,
    tenant_id: str,
    token_hash: str,
    *,
    total_expected: int | None = None,
    upload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ShimBatch record (schemas/shim_batch.avsc)."""
    now = now_ms()
    return {
        "batch_id": batch_id,
        "tenant_id": tenant_id,
        "token_sha256": token_hash,
        "total_expected": total_expected,
        "state": OPEN,
        "created_at": now,
        "updated_at": now,
        "upload": upload,
    }


def find(state: State, tenant_id: str, batch_id: str) -> dict[str, Any] | None:
    record: dict[str, Any] | None = state.views[TOPIC].get(batch_id)
    return record if record is not None and record["tenant_id"] == tenant_id else None


def owned(state: State, tenant_id: str, batch_id: str) -> dict[str, Any]:
    """The caller's batch, or 404 (another tenant's batch is not found either)."""
    record = find(state, tenant_id, batch_id)
    if record is None:
        raise NotFound(f"no batch {batch_id!r}")
    return record


def check_token(record: dict[str, Any], token: str | None) -> None:
    if token is None:
        raise Forbidden(
            "the X-Batch-Token header (the token the batch was created with) is required"
        )
    if not hmac.compare_digest(record["token_sha256"], token_sha256(token)):
        raise Forbidden("the X-Batch-Token is not this batch's token")


def check_allows(record: dict[str, Any], kind: str) -> None:
    """409 for a command the batch's state refuses (the stage would reject it too)."""
    if record["state"] == CANCELLED:
        raise Conflict(f"batch {record['batch_id']} is cancelled")
    if record["state"] == CLOSED and kind in ("append", "close"):
        raise Conflict(f"batch {record['batch_id']} is closed")


async def save(state: State, record: dict[str, Any]) -> None:
    """Writes the record (acknowledged) and makes it visible in this process at once."""
    current = state.views[TOPIC].get(record["batch_id"])
    if current is not None:
        record = {**record, "state": later_state(current["state"], record["state"])}
    record = {**record, "updated_at": max(now_ms(), record["updated_at"] + 1)}
    await publish(state, TOPIC, "ShimBatch", record, key=record["batch_id"])
    state.views[TOPIC].apply(record["batch_id"], record)


async def send(state: State, command: dict[str, Any], traceparent: str | None = None) -> None:
    """One BatchCommand, keyed batch_id like every command of the batch."""
    await publish(
        state, COMMANDS, "BatchCommand", command, key=command["batch_id"], traceparent=traceparent
    )
