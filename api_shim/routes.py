"""The shim's core endpoints: send one, status by id, health and readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from api_shim import batch_registry as registry
from api_shim import errors
from api_shim.auth import Principal, Reader, Sender
from api_shim.errors import AUTHENTICATED, Conflict, InvalidField, NotFound, Unavailable
from api_shim.idempotency import IdempotencyKey, Packing, idempotent
from api_shim.models import Accepted, NotificationCreate, NotificationOut, Reschedule
from api_shim.publish import publish
from api_shim.records import notification_refs, request_record
from connectors import read_model
from core.ids import recipient_key
from core.lanes import request_topic

log = logging.getLogger(__name__)
router = APIRouter()

READY_TIMEOUT_SECONDS = 2.0


@router.post(
    "/api/v1/notifications",
    status_code=202,
    response_model=Accepted,
    responses=errors.responses(AUTHENTICATED, 403, 413, 422, 503),
    tags=["notifications"],
    summary="Send a notification",
    description="Validates the request and writes it to `notifications.requests` (or its bulk "
    "lane). Answers 202 only once Kafka has acknowledged the write (acks=all); the ids "
    "returned are those the pipeline gives each recipient x channel. With an "
    "`Idempotency-Key`, a retry gets the same answer and ids, and the pipeline sends once.",
)
# Most requests reach this function through api_shim.fast_send, which passes the same
# arguments without FastAPI's machinery: a new parameter or dependency here belongs there too.
async def send_notification(
    body: NotificationCreate,
    request: Request,
    caller: Sender,
    idempotency_key: IdempotencyKey = None,
    traceparent: Annotated[str | None, Header(max_length=128)] = None,
) -> JSONResponse:
    async def send() -> tuple[int, Accepted]:
        return 202, await produce_request(
            request.app.state, body, caller, idempotency_key, traceparent
        )

    return await idempotent(
        request, caller, idempotency_key, send, packing=accepted_packing(body, caller.tenant_id)
    )


def accepted_packing(body: NotificationCreate, tenant_id: str) -> Packing:
    """Only the request id is kept for a replay: the ids (up to 1,000 recipients x 8 channels,
    over a Kafka record's 1 MB) are derived again from it and the same body."""
    return Packing(
        pack=lambda answer: {"request_id": answer["request_id"]},
        unpack=lambda packed: jsonable_encoder(
            Accepted(
                request_id=packed["request_id"],
                notifications=notification_refs(tenant_id, packed["request_id"], body),
            )
        ),
    )


async def produce_request(
    state: Any,
    body: NotificationCreate,
    caller: Principal,
    idempotency_key: str | None,
    traceparent: str | None,
) -> Accepted:
    """One NotificationRequest onto its lane's request topic; the ids it will yield.
    InvalidField for a batch the caller's tenant does not own (issue 21, MEDIUM 8)."""
    if body.batch_id is not None and registry.find(state, caller.tenant_id, body.batch_id) is None:
        raise InvalidField(
            "batch_id",
            f"no batch {body.batch_id!r} of this tenant (create one: POST /api/v1/batches)",
        )
    record = request_record(body, tenant_id=caller.tenant_id, idempotency_key=idempotency_key)
    await publish(
        state,
        request_topic(record),
        "NotificationRequest",
        record,
        key=recipient_key(caller.tenant_id, body.recipients[0].user_id),
        traceparent=traceparent,
    )
    request_id = record["request_id"]
    return Accepted(
        request_id=request_id, notifications=notification_refs(caller.tenant_id, request_id, body)
    )


@router.get(
    "/api/v1/notifications/{notification_id}",
    response_model=NotificationOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 503),
    tags=["notifications"],
    summary="A notification's status and history",
    description="The latest state (the highest-ranked status seen) and every status event, "
    "oldest first, from the read model the Postgres sink maintains. Another tenant's "
    "notification is answered 404.",
)
def get_notification(
    notification_id: Annotated[str, Path(max_length=256)], request: Request, caller: Reader
) -> dict[str, Any]:
    try:
        found = read_model.get_notification(
            request.app.state.engine, caller.tenant_id, notification_id
        )
    except SQLAlchemyError as exc:
        raise Unavailable("the read model database is unavailable") from exc
    if found is None:
        raise NotFound(f"no notification {notification_id!r}")
    return found


class ChangeRequested(BaseModel):
    """The scheduler changes the held notification: `cancelled`, or a new `deferred` with the
    new `deferred_until`, on the status topic says it did (a release that came first wins,
    and then nothing follows)."""

    notification_id: str
    status: str


@router.delete(
    "/api/v1/notifications/{notification_id}",
    status_code=202,
    response_model=ChangeRequested,
    responses=errors.responses(AUTHENTICATED, 403, 404, 409, 503),
    tags=["notifications"],
    summary="Cancel a notification held for its send_at or quiet hours",
    description="Only while its latest status is `deferred` (409 otherwise). Digest items "
    "are not cancelled one by one.",
)
async def cancel_notification(
    notification_id: Annotated[str, Path(max_length=256)], request: Request, caller: Sender
) -> ChangeRequested:
    await _change_held(request, caller, notification_id, "cancel", release_at=0)
    return ChangeRequested(notification_id=notification_id, status="cancel_requested")


@router.patch(
    "/api/v1/notifications/{notification_id}",
    status_code=202,
    response_model=ChangeRequested,
    responses=errors.responses(AUTHENTICATED, 403, 404, 409, 422, 503),
    tags=["notifications"],
    summary="Move a held notification to a new send_at",
    description="Only while its latest status is `deferred` (409 otherwise); a time already "
    "past releases it now.",
)
async def reschedule_notification(
    notification_id: Annotated[str, Path(max_length=256)],
    body: Reschedule,
    request: Request,
    caller: Sender,
) -> ChangeRequested:
    release_at = int(body.send_at.timestamp() * 1000)
    await _change_held(request, caller, notification_id, "reschedule", release_at=release_at)
    return ChangeRequested(notification_id=notification_id, status="reschedule_requested")


async def _change_held(
    request: Request, caller: Principal, notification_id: str, kind: str, *, release_at: int
) -> None:
    """A cancel/reschedule command for the scheduler, keyed by the notification's recipient
    (from the read model), only while the notification is deferred."""
    state = request.app.state
    try:
        found = await run_in_threadpool(
            read_model.get_notification, state.engine, caller.tenant_id, notification_id
        )
    except SQLAlchemyError as exc:
        raise Unavailable("the read model database is unavailable") from exc
    if found is None:
        raise NotFound(f"no notification {notification_id!r}")
    if found["status"] != "deferred" or not found["recipient_id"]:
        raise Conflict(
            f"notification {notification_id!r} is {found['status']}; only a deferred one "
            "can be cancelled or rescheduled"
        )
    command = {
        "kind": kind,
        "notification": None,
        "release_at": release_at,
        "reason": None,
        "digest_key": None,
        "digest_rule": None,
        "issued_at": int(time.time() * 1000),
        "notification_id": notification_id,
    }
    key = recipient_key(caller.tenant_id, found["recipient_id"])
    await publish(state, "notifications.deferred", "DeferredCommand", command, key=key)


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/health", response_model=Health, tags=["operations"], summary="Process is alive")
async def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Health,
    responses={503: {"model": Health, "description": "Kafka is unreachable or views lag."}},
    tags=["operations"],
    summary="The shim can accept sends: Kafka reachable, configuration views caught up",
)
async def ready(request: Request) -> Health | JSONResponse:
    """503 only for what sending needs (Kafka, the views that authenticate and validate). The
    database serves reads alone (status, inbox): without it the shim is `degraded`, 200, so
    a load balancer keeps sending it traffic it can take, and reads answer 503 themselves."""
    state = request.app.state
    kafka, database = await asyncio.gather(
        _check(_check_kafka, state), _check(read_model.ping, state.engine)
    )
    checks = {"kafka": kafka, "database": database, "views": _views_state(state)}
    if kafka != "ok" or checks["views"] != "ok":
        return JSONResponse(status_code=503, content={"status": "unavailable", "checks": checks})
    return Health(status="ready" if database == "ok" else "degraded", checks=checks)


def _views_state(state: Any) -> str:
    """ "ok" once every compacted-topic view has caught up and none has stopped."""
    lagging = [v.topic for v in state.views.values() if v.error or not v.caught_up]
    return "ok" if not lagging else f"not caught up: {', '.join(lagging)}"


def _check_kafka(state: Any) -> None:
    topics = state.producer.list_topics(timeout=READY_TIMEOUT_SECONDS)
    for logical in ("notifications.requests", "notifications.requests.bulk"):
        if state.topics.name(logical) not in topics:
            raise RuntimeError(f"topic {state.topics.name(logical)} does not exist")


async def _check(fn: Any, arg: Any) -> str:
    try:
        await asyncio.wait_for(run_in_threadpool(fn, arg), READY_TIMEOUT_SECONDS + 0.5)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT_SECONDS:g}s"
    except Exception as exc:
        # The kind only: /ready is unauthenticated, and messages name hosts, users, paths.
        log.warning("readiness check %s failed: %s", getattr(fn, "__name__", fn), exc)
        return f"failed ({type(exc).__name__})"
    return "ok"
