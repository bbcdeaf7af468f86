"""HTTP models of send many, batches and the CSV bulk upload (docs/api.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from api_shim.models import Channel, FieldError, NotificationRef, Priority, WholeNumber

# -- send many -----------------------------------------------------------------------------


# The document says what the endpoint does: any object is taken, and each one that is not a
# valid NotificationCreate is answered as rejected in `results` (the call itself is 207). An
# item that is not an object at all refuses the whole call (422), as the schema says.
_ANY_ITEM = WithJsonSchema(
    {
        "type": "object",
        "description": "A NotificationCreate (the body of POST /api/v1/notifications), "
        "validated on its own: an invalid one is reported in `results`, not refused.",
    }
)


class SendMany(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Each item is validated on its own (api_shim.routes_batches), so that one invalid item
    # is reported with its index instead of failing the whole call.
    notifications: list[Annotated[dict[str, Any], _ANY_ITEM]] = Field(
        min_length=1, description="At most SHIM_SEND_MANY_MAX (100) per call."
    )


class ItemResult(BaseModel):
    index: int = Field(description="The item's position in `notifications`, from 0.")
    status: Literal["accepted", "rejected"]
    request_id: str | None = None
    notifications: list[NotificationRef] = Field(default_factory=list)
    errors: list[FieldError] = Field(
        default_factory=list, description="Why the item was rejected, per field."
    )


class SendManyResult(BaseModel):
    """Per item, accepted (Kafka acknowledged it; its ids) or rejected (why)."""

    accepted: int
    rejected: int
    results: list[ItemResult]


# -- batches -------------------------------------------------------------------------------

BatchState = Literal["open", "closed", "cancelled"]


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    total_expected: WholeNumber | None = Field(
        default=None,
        ge=0,
        description="Notifications (recipient x channel) the batch will hold, if known: "
        "the batch completes when that many are final. Otherwise it is fixed at close.",
    )


class BatchCreated(BaseModel):
    batch_id: str
    token: str | None = Field(
        description="Shown once: send it as `X-Batch-Token` to append, close or cancel. "
        "Only its SHA-256 is kept, so a replayed answer (Idempotency-Key) has null here."
    )
    total_expected: int | None
    state: BatchState


class ChunkAccepted(BaseModel):
    """The chunk is on notifications.batches; the batch stage forwards its requests."""

    batch_id: str
    command_id: str
    requests: int
    notifications: int = Field(description="Distinct recipient x channel in the chunk.")
    request_ids: list[str] = Field(
        description="Per request of the chunk, in order, the id the batch stage gives it; a "
        "notification's id is derived from it, the user id and the channel."
    )


class BatchCommandAccepted(BaseModel):
    batch_id: str
    command_id: str
    state: BatchState


class Rejection(BaseModel):
    command_id: str | None
    reason: str | None


class BatchProgress(BaseModel):
    """What the batch stage reported (batch events) and the latest status of every
    notification of the batch (the read model). Both follow the pipeline within moments."""

    batch_id: str
    state: BatchState = Field(description="As commanded (the stage's events win when later).")
    created_at: datetime
    upload_id: str | None = Field(description="The CSV upload that fills the batch, if any.")
    total_expected: int | None = Field(description="As declared at creation.")
    expected: int | None = Field(
        description="The notifications the batch will hold, once known: declared, or fixed "
        "when the batch was closed or cancelled."
    )
    appended: int = Field(description="Notifications in the chunks the batch stage accepted.")
    chunks_accepted: int
    chunks_rejected: int
    rejections: list[Rejection] = Field(description="The last chunks or commands refused.")
    counts: dict[str, int] = Field(description="Notifications per latest status.")
    notifications: int = Field(description="Notifications with a status so far.")
    final: int = Field(description="Notifications in a final state.")
    completed: bool = Field(description="The batch stage has emitted batch.completed.")


# -- bulk CSV upload -----------------------------------------------------------------------

UploadState = Literal["receiving", "done", "cancelled", "failed"]


class BulkParams(BaseModel):
    """What every row of the CSV shares (the query string)."""

    model_config = ConfigDict(extra="forbid")

    channels: list[Channel] = Field(min_length=1, description="Repeat for several.")
    template_id: str | None = Field(
        default=None, min_length=1, max_length=256, description="Either this or subject/text."
    )
    subject: str | None = Field(default=None, max_length=4096, description="Inline content.")
    text: str | None = Field(default=None, max_length=4096, description="Inline content.")
    priority: Priority = Priority.normal
    category: Literal["transactional", "marketing", "system", "alert"] | None = Field(
        default=None, description="marketing (or priority low) takes the bulk lane."
    )
    upload_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Your id for the upload, to follow it while it streams (GET "
        "/api/v1/bulk/{upload_id}) and to resume it after a failure. Default: derived from "
        "the Idempotency-Key, else random.",
    )
    close: bool = Field(
        default=True,
        description="Close the batch when the file ends, so it completes once every row's "
        "notifications are final.",
    )


class RowErrorOut(BaseModel):
    row: int = Field(description="The row (the header is row 1), as a spreadsheet shows it.")
    line: int = Field(description="The line the row starts on.")
    message: str


class UploadStatus(BaseModel):
    upload_id: str
    state: UploadState
    batch_id: str | None = Field(description="Its progress: GET /api/v1/batches/{batch_id}.")
    rows_read: int | None = Field(description="Data rows read (null: not known here).")
    rows_accepted: int | None
    rows_rejected: int | None
    chunks_appended: int | None
    errors: list[RowErrorOut] = Field(
        description="Rejected rows, up to SHIM_CSV_MAX_ROW_ERRORS; the rest are counted in "
        "errors_omitted."
    )
    errors_omitted: int
    error: str | None = Field(description="Why the upload failed.")
    started_at: datetime
    finished_at: datetime | None
