"""The shim's endpoints: send, status by id, health and readiness."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from api_shim import errors
from api_shim.auth import Tenant
from api_shim.errors import NotFound, Unavailable
from api_shim.models import Accepted, ErrorBody, FieldError, NotificationCreate, NotificationOut
from api_shim.producer import ProduceError, ProduceTimeout
from api_shim.records import notification_refs, request_record
from connectors import read_model
from schemas import RecordValidationError, RegistryUnavailableError
from streams.ids import recipient_key
from streams.lanes import request_topic
from streams.tracing import child_headers

router = APIRouter()

READY_TIMEOUT_SECONDS = 2.0


@router.post(
    "/api/v1/notifications",
    status_code=202,
    response_model=Accepted,
    responses=errors.responses(401, 422, 503),
    tags=["notifications"],
    summary="Send a notification",
    description="Validates the request and writes it to `notifications.requests`. Answers 202 "
    "only once Kafka has acknowledged the write (acks=all); the ids returned are those the "
    "pipeline gives each recipient x channel.",
)
async def send_notification(
    body: NotificationCreate,
    request: Request,
    tenant: Tenant,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=256)
    ] = None,
    traceparent: Annotated[str | None, Header(max_length=128)] = None,
) -> Accepted | JSONResponse:
    state = request.app.state
    record = request_record(body, tenant_id=tenant, idempotency_key=idempotency_key)
    try:
        value = await run_in_threadpool(state.codec.encode, "NotificationRequest", record)
    except RecordValidationError as exc:
        # The path starts with the record name: "NotificationRequest.recipients.0.user_id".
        field = exc.path.partition(".")[2] or "body"
        detail = [FieldError(field=field, message=exc.problem)]
        body_out = ErrorBody(error="validation_failed", message=str(exc), detail=detail)
        return errors.error_response(422, body_out)
    except RegistryUnavailableError as exc:
        raise Unavailable("the schema registry is unavailable; retry later") from exc
    try:
        await state.producer.produce(
            state.topics.name(request_topic(record)),
            key=recipient_key(tenant, body.recipients[0].user_id).encode(),
            value=value,
            headers=child_headers({"traceparent": traceparent} if traceparent else None),
        )
    except ProduceTimeout as exc:
        raise Unavailable(
            f"Kafka did not acknowledge the request within {state.producer.ack_timeout:g}s; "
            "it may still be "
            "written. Retry with the same Idempotency-Key."
        ) from exc
    except ProduceError as exc:
        raise Unavailable(f"Kafka did not accept the request: {exc}") from exc
    request_id = record["request_id"]
    return Accepted(request_id=request_id, notifications=notification_refs(request_id, body))


@router.get(
    "/api/v1/notifications/{notification_id}",
    response_model=NotificationOut,
    responses=errors.responses(401, 404, 503),
    tags=["notifications"],
    summary="A notification's status and history",
    description="The latest state (the highest-ranked status seen) and every status event, "
    "oldest first, from the read model the Postgres sink maintains. Another tenant's "
    "notification is answered 404.",
)
def get_notification(
    notification_id: Annotated[str, Path(max_length=256)], request: Request, tenant: Tenant
) -> dict[str, Any]:
    try:
        found = read_model.get_notification(request.app.state.engine, tenant, notification_id)
    except SQLAlchemyError as exc:
        raise Unavailable("the read model database is unavailable") from exc
    if found is None:
        raise NotFound(f"no notification {notification_id!r}")
    return found


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/health", response_model=Health, tags=["operations"], summary="Process is alive")
async def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Health,
    responses={503: {"model": Health, "description": "Kafka or the database is unreachable."}},
    tags=["operations"],
    summary="Kafka and the database are reachable",
)
async def ready(request: Request) -> Health | JSONResponse:
    state = request.app.state
    kafka, database = await asyncio.gather(
        _check(_check_kafka, state), _check(read_model.ping, state.engine)
    )
    checks = {"kafka": kafka, "database": database}
    if kafka == database == "ok":
        return Health(status="ready", checks=checks)
    return JSONResponse(status_code=503, content={"status": "unavailable", "checks": checks})


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
        return f"{type(exc).__name__}: {exc}"
    return "ok"
