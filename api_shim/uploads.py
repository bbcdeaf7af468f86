"""CSV bulk uploads: each one streams its rows into a batch of its own, chunk by chunk.

The upload's state (rows read, accepted, rejected, the row errors) lives in the process that
receives it (`Uploads`); its start and its end are also written into the batch's shim.batches
record, so every shim process can answer for it and cancel it. Reading stops when the upload
is cancelled here or (seen through shim.batches) through another process.

Chunks are appended with derived command ids (`chunk-<n>` of the batch, itself derived from
tenant and upload id): uploading the same file again with the same upload id after a failure
resumes it, and the batch stage skips the chunks it already applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import State
from starlette.requests import ClientDisconnect, Request

from api_shim import batch_registry as registry
from api_shim.batch_models import RowErrorOut, UploadStatus
from api_shim.bulk_csv import Row, RowError, RowParser
from api_shim.idempotency import StreamedBody
from api_shim.records import request_record
from streams.batch_client import build_command, command_id_for, new_batch, token_sha256

log = logging.getLogger(__name__)

RECEIVING, DONE, CANCELLED, FAILED = "receiving", "done", "cancelled", "failed"
MAX_CHUNK_CHARS = 512 * 1024  # a chunk is one Kafka message: stay well under 1 MB
CANCEL_POLL_SECONDS = 0.25
KEEP_FINISHED = 1000  # finished uploads remembered per process (then shim.batches answers)


def _time(epoch_ms: int | None) -> datetime | None:
    return None if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


@dataclass
class Upload:
    upload_id: str
    tenant_id: str
    batch_id: str
    max_errors: int
    started_at: int = field(default_factory=registry.now_ms)
    state: str = RECEIVING
    batch_created: bool = False
    rows_read: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    chunks_appended: int = 0
    errors: list[RowError] = field(default_factory=list)
    errors_omitted: int = 0
    error: str | None = None
    finished_at: int | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    def reject(self, error: RowError) -> None:
        self.rows_rejected += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(error)
        else:
            self.errors_omitted += 1

    def finish(self, state: str, error: str | None = None) -> None:
        if self.state == RECEIVING:
            self.state, self.error, self.finished_at = state, error, registry.now_ms()

    def cancelled(self) -> None:
        """Cancelled through the API: stops reading (if it still is) and says so at once."""
        self.cancel.set()
        self.state = CANCELLED
        self.finished_at = self.finished_at or registry.now_ms()

    def status(self) -> UploadStatus:
        return UploadStatus(
            upload_id=self.upload_id,
            state=self.state,  # type: ignore[arg-type]
            batch_id=self.batch_id if self.batch_created else None,
            rows_read=self.rows_read,
            rows_accepted=self.rows_accepted,
            rows_rejected=self.rows_rejected,
            chunks_appended=self.chunks_appended,
            errors=[RowErrorOut(row=e.row, line=e.line, message=e.message) for e in self.errors],
            errors_omitted=self.errors_omitted,
            error=self.error,
            started_at=_time(self.started_at),  # type: ignore[arg-type]
            finished_at=_time(self.finished_at),
        )

    def summary(self) -> dict[str, Any]:
        """The BulkUploadSummary written into the batch's shim.batches record."""
        return {
            "upload_id": self.upload_id,
            "state": self.state,
            "rows_read": self.rows_read,
            "rows_accepted": self.rows_accepted,
            "rows_rejected": self.rows_rejected,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def status_from_summary(batch_id: str, summary: dict[str, Any]) -> UploadStatus:
    """An upload another process received (or one received before a restart)."""
    known = summary["state"] != RECEIVING  # counts are written at the end only
    return UploadStatus(
        upload_id=summary["upload_id"],
        state=summary["state"],
        batch_id=batch_id,
        rows_read=summary["rows_read"] if known else None,
        rows_accepted=summary["rows_accepted"] if known else None,
        rows_rejected=summary["rows_rejected"] if known else None,
        chunks_appended=None,
        errors=[],
        errors_omitted=summary["rows_rejected"] if known else 0,
        error=summary["error"],
        started_at=_time(summary["started_at"]),  # type: ignore[arg-type]
        finished_at=_time(summary["finished_at"]),
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, ClientDisconnect):
        return "the client disconnected before the end of the file"
    if isinstance(exc, asyncio.CancelledError):
        return "the shim stopped before the end of the file"
    detail = getattr(exc, "message", None) or getattr(exc, "detail", None)
    return str(detail or exc or type(exc).__name__)


class Uploads:
    """This process's uploads by (tenant, upload id); the oldest finished ones are forgotten."""

    def __init__(self) -> None:
        self._uploads: OrderedDict[tuple[str, str], Upload] = OrderedDict()

    def get(self, tenant_id: str, upload_id: str) -> Upload | None:
        return self._uploads.get((tenant_id, upload_id))

    def add(self, upload: Upload) -> None:
        self._uploads[(upload.tenant_id, upload.upload_id)] = upload
        finished = [k for k, u in self._uploads.items() if u.state != RECEIVING]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._uploads[key]


class Receiver:
    """Streams one upload's body into its batch."""

    def __init__(
        self,
        state: State,
        upload: Upload,
        base: dict[str, Any],
        *,
        category: str | None,
        close: bool,
        traceparent: str | None,
        body_digest: StreamedBody | None = None,
    ) -> None:
        self.state = state
        self.body_digest = body_digest
        self.upload = upload
        self.parser = RowParser(base)
        self.category = category
        self.close = close
        self.traceparent = traceparent
        self.chunk_rows: int = state.settings.shim_csv_chunk_rows
        self.pending: list[dict[str, Any]] = []
        self.pending_chars = 0
        self.token_hash = ""
        # Every row repeats the shared content: count it against the chunk's size.
        self.row_overhead = 256 + sum(len(str(v)) for v in base.values())

    async def run(self, request: Request) -> None:
        """Reads to the end (or a cancel); raises what stops it (CsvFormatError, 413, 503,
        a client gone), after marking the upload failed and writing that down."""
        upload = self.upload
        try:
            async for data in self._body(request):
                await self._take(self.parser.feed(data))
            if not self._cancelled():
                if self.body_digest is not None:
                    self.body_digest.finish()
                await self._take(self.parser.finish())
                await self._flush()
                if self.close:
                    await self._close_batch()
            upload.finish(CANCELLED if self._cancelled() else DONE)
        except BaseException as exc:
            upload.finish(FAILED, _why(exc))
            raise
        finally:
            await self._record_end()

    async def _take(self, items: list[Row | RowError]) -> None:
        if self._cancelled():
            return  # cancelled while this part was on its way: nothing more is created
        if self.parser.header is not None and not self.upload.batch_created:
            await self._create_batch()
        for item in items:
            self.upload.rows_read += 1
            if isinstance(item, RowError):
                self.upload.reject(item)
                continue
            record = request_record(
                item.request, tenant_id=self.upload.tenant_id, idempotency_key=None
            )
            if self.category is not None:
                record["category"] = self.category
            self.pending.append(record)
            self.pending_chars += self.row_overhead + len(record["data_json"])
            if len(self.pending) >= self.chunk_rows or self.pending_chars >= MAX_CHUNK_CHARS:
                await self._flush()

    async def _flush(self) -> None:
        upload = self.upload
        if not self.pending or self._cancelled():
            return
        command = build_command(
            "append",
            upload.batch_id,
            upload.tenant_id,
            token_hash=self.token_hash,
            command_id=command_id_for(upload.batch_id, f"chunk-{upload.chunks_appended}"),
            requests=self.pending,
        )
        await registry.send(self.state, command, self.traceparent)
        upload.chunks_appended += 1
        upload.rows_accepted += len(self.pending)
        self.pending, self.pending_chars = [], 0

    async def _create_batch(self) -> None:
        """The upload's batch, or the one a failed earlier attempt left (resumed)."""
        upload = self.upload
        record = registry.find(self.state, upload.tenant_id, upload.batch_id)
        if record is None:
            _, token = new_batch()  # never shown: only this shim appends to the batch
            record = registry.new_record(upload.batch_id, upload.tenant_id, token_sha256(token))
        self.token_hash = record["token_sha256"]
        await registry.save(self.state, {**record, "upload": upload.summary()})
        command = build_command(
            "create",
            upload.batch_id,
            upload.tenant_id,
            token_hash=self.token_hash,
            command_id=command_id_for(upload.batch_id, "create"),
        )
        await registry.send(self.state, command, self.traceparent)
        upload.batch_created = True

    async def _close_batch(self) -> None:
        upload = self.upload
        command = build_command(
            "close",
            upload.batch_id,
            upload.tenant_id,
            token_hash=self.token_hash,
            command_id=command_id_for(upload.batch_id, "close"),
        )
        await registry.send(self.state, command, self.traceparent)
        record = registry.find(self.state, upload.tenant_id, upload.batch_id)
        if record is not None:
            state = registry.later_state(record["state"], registry.CLOSED)
            await registry.save(self.state, {**record, "state": state})

    async def _record_end(self) -> None:
        """The upload's end in its shim.batches record (best effort: Kafka may be down)."""
        upload = self.upload
        record = registry.find(self.state, upload.tenant_id, upload.batch_id)
        if record is None or not upload.batch_created:
            return
        try:
            await registry.save(self.state, {**record, "upload": upload.summary()})
        except Exception as exc:
            log.warning("upload %s: its end was not recorded: %s", upload.upload_id, exc)

    def _cancelled(self) -> bool:
        if self.upload.cancel.is_set():
            return True
        record = registry.find(self.state, self.upload.tenant_id, self.upload.batch_id)
        return record is not None and record["state"] == registry.CANCELLED

    async def _body(self, request: Request) -> AsyncIterator[bytes]:
        """The body's chunks until it ends or the upload is cancelled, even while the client
        is silent: a cancelled upload is answered without reading the rest."""
        chunks = request.stream().__aiter__()
        while not self._cancelled():
            next_chunk = asyncio.ensure_future(chunks.__anext__())
            while not next_chunk.done():
                cancel = asyncio.ensure_future(self.upload.cancel.wait())
                await asyncio.wait(
                    {next_chunk, cancel},
                    timeout=CANCEL_POLL_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                cancel.cancel()
                if not next_chunk.done() and self._cancelled():
                    next_chunk.cancel()
                    return
            try:
                data = next_chunk.result()
            except StopAsyncIteration:
                return
            if data:
                if self.body_digest is not None:
                    self.body_digest.update(data)
                yield data
