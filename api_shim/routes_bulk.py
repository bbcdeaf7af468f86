"""The CSV bulk upload: POST a streamed CSV, follow it, cancel it (api_shim.uploads)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import State

from api_shim import batch_registry as registry
from api_shim import errors
from api_shim.auth import Principal, Reader, Sender
from api_shim.batch_models import BulkParams, UploadStatus
from api_shim.bulk_csv import CsvFormatError
from api_shim.errors import AUTHENTICATED, ApiError, Conflict, InvalidField, NotFound
from api_shim.idempotency import IdempotencyKey, StreamedBody, idempotent
from api_shim.models import ErrorBody, NotificationCreate
from api_shim.uploads import (
    CANCELLED,
    DONE,
    RECEIVING,
    Receiver,
    Upload,
    Uploads,
    status_from_summary,
)
from streams.batch_client import build_command, command_id_for


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.uploads = Uploads()
    yield


router = APIRouter(lifespan=_lifespan)

_UPLOAD_IDS = uuid.UUID("a3c4e2d1-7b9f-4c2e-8d1a-6f5b3e2c9a70")
CSV_TYPES = ("text/csv", "application/csv")
UploadId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class MalformedCsv(InvalidField):
    """400 naming the row: {"error": "malformed_csv", "detail": [{"field": "row 7", ...}]}."""

    status_code = 400
    error = "malformed_csv"

    def __init__(self, upload: Upload, exc: CsvFormatError) -> None:
        super().__init__(f"row {exc.row}", f"line {exc.line}: {exc.problem}")
        kept = (
            f"; its batch {upload.batch_id} keeps what was appended" if upload.batch_created else ""
        )
        self.message = f"upload {upload.upload_id} stopped at {exc}{kept}"


class UnsupportedMediaType(ApiError):
    status_code = 415
    error = "unsupported_media_type"


_ERROR_415: dict[int | str, dict[str, Any]] = {
    415: {"model": ErrorBody, "description": "The body is not `text/csv` (UTF-8)."},
}


def _check_content_type(value: str | None) -> None:
    media, _, params = (value or "").partition(";")
    charset = dict(p.strip().lower().split("=", 1) for p in params.split(";") if "=" in p).get(
        "charset", "utf-8"
    )
    if media.strip().lower() not in CSV_TYPES or charset.strip('"') not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(
            f"the upload must be sent as text/csv in UTF-8, not {value or 'no Content-Type'}"
        )


def _base(params: BulkParams) -> dict[str, Any]:
    """What every row shares, validated once (422 naming the query parameter)."""
    content = None
    if params.subject is not None or params.text is not None:
        content = {"subject": params.subject, "text": params.text}
    base: dict[str, Any] = {
        "channels": [channel.value for channel in params.channels],
        "template_id": params.template_id,
        "content": content,
        "priority": params.priority.value,
    }
    try:
        NotificationCreate.model_validate({**base, "recipients": [{"user_id": "-"}]})
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
        ) from exc
    return base


def _upload_id(caller: Principal, params: BulkParams, idempotency_key: str | None) -> str:
    if params.upload_id is not None:
        return params.upload_id
    if idempotency_key is not None:
        return str(uuid.uuid5(_UPLOAD_IDS, f"{caller.tenant_id}:{idempotency_key}"))
    return str(uuid.uuid4())


def _start(state: State, caller: Principal, upload_id: str) -> Upload:
    """A new upload, or the resumption of one that failed; 409 for one still receiving here or
    already finished."""
    uploads: Uploads = state.uploads
    existing = uploads.get(caller.tenant_id, upload_id)
    if existing is not None and existing.state == RECEIVING:
        raise Conflict(f"upload {upload_id} is still receiving")
    batch_id = registry.upload_batch_id(state, caller.tenant_id, upload_id)
    record = registry.find(state, caller.tenant_id, batch_id)
    summary = (record or {}).get("upload") or {}
    finished = existing is not None and existing.state in (DONE, CANCELLED)
    if (
        finished
        or summary.get("state") in (DONE, CANCELLED)
        or (record is not None and record["state"] != registry.OPEN)
    ):
        raise Conflict(
            f"upload {upload_id} has already finished; a new upload needs a new upload_id"
        )
    upload = Upload(
        upload_id=upload_id,
        tenant_id=caller.tenant_id,
        batch_id=batch_id,
        max_errors=state.settings.shim_csv_max_row_errors,
    )
    uploads.add(upload)
    return upload


@router.post(
    "/api/v1/bulk",
    status_code=202,
    response_model=UploadStatus,
    responses={
        200: {"model": UploadStatus, "description": "The upload was cancelled while streaming."},
        **errors.responses(AUTHENTICATED, 400, 403, 409, 413, 422, 503),
        **_ERROR_415,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "user_id,email,locale,data.name\nu-1,ada@example.com,en-GB,Ada\n",
                }
            },
        }
    },
    tags=["bulk"],
    summary="Upload a CSV of recipients (streamed)",
    description="Streams the CSV (header row: `user_id` required; `email`, `phone`, `locale`, "
    "`timezone`, `data.<name>`) row by row into a batch of its own: valid rows are appended "
    "in chunks of SHIM_CSV_CHUNK_ROWS as they arrive, invalid rows are listed with their row "
    "number and skipped. The file is never held whole. Answers when the body has been read: "
    "202 with the counts and row errors (then the batch is closed unless `close=false`), or "
    "200 if the upload was cancelled meanwhile. 400: malformed CSV (bad quoting, not UTF-8, "
    "no header or no user_id column), naming the row; rows before it stay appended, and the "
    "same file with the same `upload_id` resumes it. 413: over SHIM_MAX_CSV_BYTES.",
)
async def upload_csv(
    request: Request,
    caller: Sender,
    params: Annotated[BulkParams, Query()],
    idempotency_key: IdempotencyKey = None,
    traceparent: Annotated[str | None, Header(max_length=128)] = None,
) -> JSONResponse:
    state = request.app.state
    _check_content_type(request.headers.get("content-type"))
    base = _base(params)
    upload_id = _upload_id(caller, params, idempotency_key)
    # The body streams and cannot be hashed first: it is hashed as the receiver reads it.
    streamed = StreamedBody(request.url.query)

    async def receive() -> tuple[int, UploadStatus]:
        upload = _start(state, caller, upload_id)
        receiver = Receiver(
            state,
            upload,
            base,
            category=params.category,
            close=params.close,
            traceparent=traceparent,
            body_digest=streamed,
        )
        try:
            await receiver.run(request)
        except CsvFormatError as exc:
            raise MalformedCsv(upload, exc) from exc
        return (200 if upload.state == CANCELLED else 202), upload.status()

    return await idempotent(request, caller, idempotency_key, receive, streamed=streamed)


def _find(state: State, caller: Principal, upload_id: str) -> tuple[Upload | None, Any]:
    batch_id = state.views[registry.TOPIC].upload_batch(caller.tenant_id, upload_id)
    record = registry.find(state, caller.tenant_id, batch_id) if batch_id else None
    if record is not None and record.get("upload") is None:
        record = None
    return state.uploads.get(caller.tenant_id, upload_id), record


@router.get(
    "/api/v1/bulk/{upload_id}",
    response_model=UploadStatus,
    responses=errors.responses(AUTHENTICATED, 403, 404),
    tags=["bulk"],
    summary="An upload's progress",
    description="Rows read, accepted and rejected so far, the row errors, the state "
    "(receiving, done, cancelled, failed) and the batch (its notifications' progress: GET "
    "/api/v1/batches/{batch_id}). Counts and row errors are known to the shim process "
    "receiving the upload; another process answers from the upload's record on "
    "shim.batches (its state, and its counts once it has ended).",
)
async def get_upload(upload_id: UploadId, request: Request, caller: Reader) -> UploadStatus:
    upload, record = _find(request.app.state, caller, upload_id)
    if upload is not None:
        return upload.status()
    if record is not None:
        return status_from_summary(record["batch_id"], record["upload"])
    raise NotFound(f"no upload {upload_id!r}")


@router.delete(
    "/api/v1/bulk/{upload_id}",
    status_code=202,
    response_model=UploadStatus,
    responses=errors.responses(AUTHENTICATED, 403, 404, 503),
    tags=["bulk"],
    summary="Cancel an upload",
    description="Stops reading the upload if it is still streaming (through whichever shim "
    "process receives it) and cancels its batch: notifications not yet handed to a provider "
    "end `cancelled`. Cancelling again answers the same.",
)
async def cancel_upload(upload_id: UploadId, request: Request, caller: Sender) -> UploadStatus:
    state = request.app.state
    upload, record = _find(state, caller, upload_id)
    if upload is None and record is None:
        raise NotFound(f"no upload {upload_id!r}")
    if upload is not None:
        upload.cancelled()
    if record is not None and record["state"] != registry.CANCELLED:
        command = build_command(
            "cancel",
            record["batch_id"],
            caller.tenant_id,
            token_hash=record["token_sha256"],
            command_id=command_id_for(record["batch_id"], "cancel"),
        )
        await registry.send(state, command)
        summary = (
            upload.summary()
            if upload
            else {
                **record["upload"],
                "state": CANCELLED,
                "finished_at": record["upload"]["finished_at"] or registry.now_ms(),
            }
        )
        await registry.save(state, {**record, "state": registry.CANCELLED, "upload": summary})
        record = registry.find(state, caller.tenant_id, record["batch_id"])
    if upload is not None:
        return upload.status()
    assert record is not None
    return status_from_summary(record["batch_id"], record["upload"])
