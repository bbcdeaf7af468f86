"""Send many, and batches: create, append chunks with the batch token, close, cancel, progress.

Send many validates each item on its own and answers per item (207 when any was refused):
the items are independent notifications, Kafka has no transaction across them here, and a
caller can resend just the refused ones. A chunk appended to a batch is the opposite: it is
one BatchCommand, applied whole by the batch stage, so it is validated whole (422).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api_shim import batch_registry as registry
from api_shim import errors
from api_shim.admin_common import shown_once
from api_shim.auth import Principal, Reader, Sender
from api_shim.batch_models import (
    BatchCommandAccepted,
    BatchCreate,
    BatchCreated,
    BatchProgress,
    ChunkAccepted,
    ItemResult,
    SendMany,
    SendManyResult,
)
from api_shim.batch_progress import TOPIC as EVENTS
from api_shim.batch_progress import BatchEventsView, batch_progress
from api_shim.errors import AUTHENTICATED, InvalidField, PayloadTooLarge
from api_shim.idempotency import IdempotencyKey, Packing, idempotent
from api_shim.models import FieldError, NotificationCreate
from api_shim.records import check_providers, notification_refs, request_record
from api_shim.routes import produce_request
from api_shim.views import CompactedView
from streams.batch_client import (
    build_command,
    command_id_for,
    new_batch,
    request_id_for,
    token_sha256,
)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Follows shim.batches (owners, token hashes) and notifications.batch-events (progress);
    the app stops them with its other views, and /ready reports them."""
    state = app.state
    views = {
        registry.TOPIC: registry.RegistryView(
            state.settings, state.topics.name(registry.TOPIC), "ShimBatch", state.codec
        ),
        EVENTS: BatchEventsView(
            state.settings, state.topics.name(EVENTS), "BatchEvent", state.codec
        ),
    }
    for view in views.values():
        view.start()
    state.views.update(views)
    await run_in_threadpool(_wait_caught_up, views, state.settings.shim_view_catchup_seconds)
    yield


def _wait_caught_up(views: dict[str, CompactedView], seconds: float) -> None:
    """Up to `seconds` in all (not per view); /ready says which one lags."""
    deadline = time.monotonic() + seconds
    for view in views.values():
        view.wait_caught_up(max(0.0, deadline - time.monotonic()))


router = APIRouter(lifespan=_lifespan)

BatchId = Annotated[str, Path(min_length=1, max_length=64)]
BatchToken = Annotated[
    str | None,
    Header(
        alias="X-Batch-Token",
        max_length=256,
        description="The token the batch was created with (shown once, in the 201).",
    ),
]
Traceparent = Annotated[str | None, Header(max_length=128)]


# -- send many -----------------------------------------------------------------------------


@router.post(
    "/api/v1/notifications/batch",
    status_code=202,
    response_model=SendManyResult,
    responses={
        207: {
            "model": SendManyResult,
            "description": "Some items were refused (`status: rejected`, with `errors`); the "
            "others were accepted.",
        },
        **errors.responses(AUTHENTICATED, 403, 413, 422, 503),
    },
    tags=["notifications"],
    summary="Send many notifications",
    description="Up to SHIM_SEND_MANY_MAX (100) notifications, each validated like send one. "
    "Valid items are written to the request topic; refused ones are reported with their index "
    "and field errors. 202 when every item was accepted, 207 otherwise. With an "
    "`Idempotency-Key` K, the call's answer is replayed to a retry, and item i is sent with the "
    "key `K:i`, so the pipeline sends each item once even if a retry races the first call. "
    "503 (Kafka did not acknowledge every item): retry the whole call with the same key.",
)
async def send_many(
    body: SendMany,
    request: Request,
    caller: Sender,
    idempotency_key: IdempotencyKey = None,
    traceparent: Traceparent = None,
) -> JSONResponse:
    state = request.app.state
    limit = state.settings.shim_send_many_max
    if len(body.notifications) > limit:
        raise PayloadTooLarge(f"{len(body.notifications)} notifications; at most {limit} per call")

    async def send() -> tuple[int, SendManyResult]:
        items: list[Any] = list(body.notifications)
        results = await asyncio.gather(
            *(
                _send_item(state, index, item, caller, idempotency_key, traceparent)
                for index, item in enumerate(items)
            )
        )
        accepted = sum(1 for r in results if r.status == "accepted")
        result = SendManyResult(
            accepted=accepted, rejected=len(results) - accepted, results=list(results)
        )
        return (202 if accepted == len(results) else 207), result

    return await idempotent(
        request, caller, idempotency_key, send, packing=_send_many_packing(body, caller.tenant_id)
    )


def _send_many_packing(body: SendMany, tenant_id: str) -> Packing:
    """Kept without each accepted item's ids (up to 100 x 1,000 x 8): a replay derives them
    again from the item and its request id, as send one's replay does."""

    def pack(answer: dict[str, Any]) -> dict[str, Any]:
        results = [{k: v for k, v in r.items() if k != "notifications"} for r in answer["results"]]
        return {**answer, "results": results}

    def unpack(packed: dict[str, Any]) -> dict[str, Any]:
        results = []
        for result in packed["results"]:
            refs: list[Any] = []
            if result["status"] == "accepted":
                item = NotificationCreate.model_validate(body.notifications[result["index"]])
                refs = notification_refs(tenant_id, result["request_id"], item)
            results.append(ItemResult.model_validate({**result, "notifications": refs}))
        return jsonable_encoder(SendManyResult.model_validate({**packed, "results": results}))

    return Packing(pack=pack, unpack=unpack)


async def _send_item(
    state: Any,
    index: int,
    item: Any,
    caller: Principal,
    idempotency_key: str | None,
    traceparent: str | None,
) -> ItemResult:
    try:
        parsed = NotificationCreate.model_validate(item)
    except ValidationError as exc:
        return ItemResult(
            index=index,
            status="rejected",
            errors=errors.field_errors([dict(e) for e in exc.errors()]),
        )
    key = f"{idempotency_key}:{index}" if idempotency_key else None
    try:
        accepted = await produce_request(state, parsed, caller, key, traceparent)
    # The schema refused what the model let through, or the override is another tenant's.
    except InvalidField as exc:
        return ItemResult(
            index=index,
            status="rejected",
            errors=[FieldError(field=exc.field, message=exc.problem)],
        )
    return ItemResult(
        index=index,
        status="accepted",
        request_id=accepted.request_id,
        notifications=accepted.notifications,
    )


# -- batches -------------------------------------------------------------------------------


def _command_id(caller: Principal, batch_id: str, idempotency_key: str | None) -> str:
    """Derived from the Idempotency-Key, so a retry racing the first call (through another
    shim process) is one command to the stage, which applies a command id once."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return command_id_for(batch_id, f"idempotency:{caller.tenant_id}:{idempotency_key}")


@router.post(
    "/api/v1/batches",
    status_code=201,
    response_model=BatchCreated,
    responses=errors.responses(AUTHENTICATED, 403, 422, 503),
    tags=["batches"],
    summary="Create a batch",
    description="Registers the batch (its token's SHA-256 on shim.batches) and sends the "
    "batch stage a `create` command. The token is in this answer only: keep it, it is needed "
    "to append, close or cancel. A retry with the same `Idempotency-Key` gets the same batch "
    "with `token: null` (the token is never stored); if the first answer was lost, create "
    "another batch.",
)
async def create_batch(
    request: Request,
    caller: Sender,
    body: Annotated[BatchCreate | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
    traceparent: Traceparent = None,
) -> JSONResponse:
    state = request.app.state
    total_expected = body.total_expected if body else None

    async def create() -> tuple[int, BatchCreated]:
        batch_id, token = new_batch()
        record = registry.new_record(
            batch_id, caller.tenant_id, token_sha256(token), total_expected=total_expected
        )
        await registry.save(state, record)
        command = build_command(
            "create",
            batch_id,
            caller.tenant_id,
            token,
            command_id=command_id_for(batch_id, "create"),
            total_expected=total_expected,
        )
        await registry.send(state, command, traceparent)
        return 201, BatchCreated(
            batch_id=batch_id, token=token, total_expected=total_expected, state="open"
        )

    # A replay answers the same batch with `token: null`: a secret never reaches a topic.
    return await shown_once(
        request, caller, idempotency_key, create, lambda b: b.model_copy(update={"token": None})
    )


@router.post(
    "/api/v1/batches/{batch_id}/chunks",
    status_code=202,
    response_model=ChunkAccepted,
    responses=errors.responses(AUTHENTICATED, 403, 404, 409, 413, 422, 503),
    tags=["batches"],
    summary="Append a chunk of requests to a batch",
    description="A JSON list of up to SHIM_BATCH_CHUNK_MAX (500) requests, each validated like "
    "send one; any invalid one refuses the whole chunk (422, fields named `<index>.<field>`), "
    "as the batch stage applies a chunk whole. Answers 202 once the `append` command is on "
    "notifications.batches; the stage then forwards the requests to the request topic "
    "(progress: GET /api/v1/batches/{batch_id}). 403: a missing or wrong `X-Batch-Token`; "
    "409: the batch is closed or cancelled.",
)
async def append_chunk(
    batch_id: BatchId,
    body: Annotated[list[NotificationCreate], Body(min_length=1)],
    request: Request,
    caller: Sender,
    x_batch_token: BatchToken = None,
    idempotency_key: IdempotencyKey = None,
    traceparent: Traceparent = None,
) -> JSONResponse:
    state = request.app.state
    record = registry.owned(state, caller.tenant_id, batch_id)
    registry.check_token(record, x_batch_token)
    limit = state.settings.shim_batch_chunk_max
    if len(body) > limit:
        raise PayloadTooLarge(f"the chunk has {len(body)} requests; at most {limit} per chunk")
    for index, item in enumerate(body):  # fields named "<index>.<field>", as validation does
        check_providers(item, caller.tenant_id, field=f"{index}.providers")

    async def append() -> tuple[int, ChunkAccepted]:
        registry.check_allows(registry.owned(state, caller.tenant_id, batch_id), "append")
        command_id = _command_id(caller, batch_id, idempotency_key)
        requests = [
            request_record(item, tenant_id=caller.tenant_id, idempotency_key=None) for item in body
        ]
        command = build_command(
            "append",
            batch_id,
            caller.tenant_id,
            token_hash=record["token_sha256"],
            command_id=command_id,
            requests=requests,
        )
        await registry.send(state, command, traceparent)
        request_ids = [request_id_for(batch_id, command_id, i) for i in range(len(requests))]
        # Recipients and channels are unique per request (the model checks): no overlap.
        count = sum(len(item.recipients) * len(item.channels) for item in body)
        return 202, ChunkAccepted(
            batch_id=batch_id,
            command_id=command_id,
            requests=len(requests),
            notifications=count,
            request_ids=request_ids,
        )

    return await idempotent(request, caller, idempotency_key, append)


async def _close_or_cancel(
    request: Request,
    caller: Principal,
    batch_id: str,
    token: str | None,
    kind: str,
    idempotency_key: str | None,
    traceparent: str | None,
) -> JSONResponse:
    state = request.app.state
    registry.check_token(registry.owned(state, caller.tenant_id, batch_id), token)

    async def command() -> tuple[int, BatchCommandAccepted]:
        record = registry.owned(state, caller.tenant_id, batch_id)
        registry.check_allows(record, kind)
        command_id = _command_id(caller, batch_id, idempotency_key)
        new_state = registry.CANCELLED if kind == "cancel" else registry.CLOSED
        await registry.send(
            state,
            build_command(
                kind,
                batch_id,
                caller.tenant_id,
                token_hash=record["token_sha256"],
                command_id=command_id,
            ),
            traceparent,
        )
        await registry.save(state, {**record, "state": new_state})
        return 202, BatchCommandAccepted(
            batch_id=batch_id,
            command_id=command_id,
            state=new_state,  # type: ignore[arg-type]
        )

    return await idempotent(request, caller, idempotency_key, command)


@router.post(
    "/api/v1/batches/{batch_id}/close",
    status_code=202,
    response_model=BatchCommandAccepted,
    responses=errors.responses(AUTHENTICATED, 403, 404, 409, 503),
    tags=["batches"],
    summary="Close a batch",
    description="No more chunks. A batch created without `total_expected` now expects what was "
    "appended, and completes (batch.completed) once all of it is final.",
)
async def close_batch(
    batch_id: BatchId,
    request: Request,
    caller: Sender,
    x_batch_token: BatchToken = None,
    idempotency_key: IdempotencyKey = None,
    traceparent: Traceparent = None,
) -> JSONResponse:
    return await _close_or_cancel(
        request, caller, batch_id, x_batch_token, "close", idempotency_key, traceparent
    )


@router.post(
    "/api/v1/batches/{batch_id}/cancel",
    status_code=202,
    response_model=BatchCommandAccepted,
    responses=errors.responses(AUTHENTICATED, 403, 404, 409, 503),
    tags=["batches"],
    summary="Cancel a batch",
    description="No more chunks, and the batch's notifications not yet handed to a provider "
    "end `cancelled` (those already sent stay sent).",
)
async def cancel_batch(
    batch_id: BatchId,
    request: Request,
    caller: Sender,
    x_batch_token: BatchToken = None,
    idempotency_key: IdempotencyKey = None,
    traceparent: Traceparent = None,
) -> JSONResponse:
    return await _close_or_cancel(
        request, caller, batch_id, x_batch_token, "cancel", idempotency_key, traceparent
    )


@router.get(
    "/api/v1/batches/{batch_id}",
    response_model=BatchProgress,
    responses=errors.responses(AUTHENTICATED, 403, 404, 503),
    tags=["batches"],
    summary="A batch's progress",
    description="Chunks accepted or rejected and notifications appended (from the batch "
    "stage's events), notifications per latest status (from the read model), completion. "
    "Needs no batch token: the `read` scope of the batch's tenant.",
)
async def get_batch(batch_id: BatchId, request: Request, caller: Reader) -> BatchProgress:
    state = request.app.state
    return await batch_progress(state, registry.owned(state, caller.tenant_id, batch_id))
