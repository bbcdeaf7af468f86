"""Admin endpoints for outgoing status webhooks: subscriptions and their delivery log.

A subscription is a WebhookSubscription event on config.webhook-subscriptions (compacted,
keyed tenant_id:subscription_id); the workers (streams/webhooks/agents.py) follow that topic
and POST the tenant's status events to it, signed. Its signing secret is shown once, in the
answer that created (or rotated) it, and kept only sealed with AES-GCM, bound to
`tenant_id:webhook:subscription_id` (core/sealing.py). The URL passes the SSRF guard
(`connectors.webhook.check_target`) here and again before every delivery.
"""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.json_schema import JsonDict
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import State

from api_shim import errors
from api_shim.admin_common import FieldProblem, id_path, shown_once
from api_shim.auth import Admin, Principal
from api_shim.errors import AUTHENTICATED, Conflict, NotFound, Unavailable, Unprocessable
from api_shim.idempotency import IdempotencyKey
from api_shim.publish import produce, publish
from connectors import read_model
from connectors.errors import DeliveryError
from connectors.webhook import check_target
from core.sealing import SealingError, SecretBox
from schemas import SchemaCatalog
from streams.config.apply import provider_box
from streams.config.kinds import ConfigError
from streams.webhooks.rules import sealed_as, secrets_to_seal, subscription_key

router = APIRouter(prefix="/api/v1/admin/webhooks", tags=["webhooks"])

TOPIC = "config.webhook-subscriptions"
STATUSES: tuple[str, ...] = tuple(SchemaCatalog.load().expanded("NotificationStatus")["symbols"])
SECRET_PREFIX = "whsec_"

SubscriptionId = Annotated[str, id_path("The subscription's id.")]
# Stated in the document too, so a client (or a fuzzer) knows the values before it is told.
EventType = Annotated[str, WithJsonSchema({"type": "string", "enum": list(STATUSES)})]
URL_SCHEME: JsonDict = {"pattern": "^[hH][tT][tT][pP][sS]?://"}


# -- models ------------------------------------------------------------------------------------


def _event_types(value: list[str]) -> list[str]:
    unknown = [v for v in value if v not in STATUSES]
    if unknown:
        raise ValueError(f"unknown status {unknown[0]!r}; one of: {', '.join(STATUSES)}")
    return list(dict.fromkeys(value))  # without repeats, in the given order


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="http(s) URL to POST to; private, loopback and link-local addresses are "
        "refused.",
        json_schema_extra=URL_SCHEME,
    )
    event_types: list[EventType] = Field(
        default_factory=list,
        max_length=len(STATUSES),
        description="Statuses to send (`delivered`, `failed`, ...); empty: every status.",
    )
    description: str | None = Field(None, max_length=500)
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=256,
        description="The signing secret; generated (and shown once) when not given.",
    )

    _check_event_types = field_validator("event_types")(_event_types)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=2048, json_schema_extra=URL_SCHEME)
    event_types: list[EventType] | None = Field(None, max_length=len(STATUSES))
    enabled: bool | None = None
    description: str | None = Field(None, max_length=500)

    @field_validator("event_types")
    @classmethod
    def _check_event_types(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _event_types(value)


class WebhookOut(BaseModel):
    subscription_id: str
    url: str
    event_types: list[str] = Field(description="Empty: every status.")
    enabled: bool
    description: str | None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str | None = Field(
        description="The signing secret: shown in this answer only (null when the answer is "
        "replayed for an Idempotency-Key; rotate the secret to get a new one)."
    )


class WebhookList(BaseModel):
    items: list[WebhookOut]


class SecretRotated(BaseModel):
    subscription_id: str
    secret: str | None = Field(
        description="The new signing secret, shown in this answer only (null when replayed)."
    )
    previous_secret_valid_until: datetime | None = Field(
        description="Until then every delivery is signed with the new and the previous secret."
    )


class DeliveryAttemptOut(BaseModel):
    attempt_id: str
    delivery_id: str = Field(description="The same on every attempt (X-Webhook-Id).")
    event_type: str
    event_id: str
    notification_id: str
    attempt: int = Field(description="From 1.")
    outcome: str = Field(description="delivered, retrying, failed or skipped.")
    http_status: int | None
    error: str | None
    response_body: str | None = Field(description="The start of the receiver's answer.")
    duration_ms: int
    url: str
    next_attempt_at: datetime | None
    occurred_at: datetime


class DeliveryLog(BaseModel):
    items: list[DeliveryAttemptOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: none.")


# -- helpers -----------------------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _time(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def _out(record: dict[str, Any]) -> WebhookOut:
    return WebhookOut(
        subscription_id=record["subscription_id"],
        url=record["url"],
        event_types=list(record["event_types"]),
        enabled=record["enabled"],
        description=record["description"],
        created_at=_time(record["created_at"]),
        updated_at=_time(record["updated_at"]),
    )


def _box(state: State) -> SecretBox:
    try:
        box = provider_box(state.settings)
    except ConfigError as exc:
        raise Unavailable("the shim's PROVIDER_SECRETS_KEY is malformed") from exc
    if box is None:
        raise Unavailable(
            "webhook secrets cannot be stored: this shim has no PROVIDER_SECRETS_KEY to seal "
            "them with (they are never stored in plaintext)"
        )
    return box


async def _check_url(state: State, url: str) -> None:
    try:
        await check_target(url, allow_private=state.settings.webhook_allow_private_targets)
    except DeliveryError as exc:
        raise FieldProblem("url", str(exc)) from exc


def _without_secret(body: WebhookCreated | SecretRotated) -> WebhookCreated | SecretRotated:
    """What a replay of the answer shows: everything but the secret, which is shown once."""
    return body.model_copy(update={"secret": None})


def _find(state: State, caller: Principal, subscription_id: str) -> dict[str, Any]:
    found: dict[str, Any] | None = state.views[TOPIC].get(
        subscription_key(caller.tenant_id, subscription_id)
    )
    if found is None or found["tenant_id"] != caller.tenant_id:
        raise NotFound(f"no webhook subscription {subscription_id!r}")
    return found


async def _save(state: State, record: dict[str, Any]) -> None:
    key = subscription_key(record["tenant_id"], record["subscription_id"])
    await publish(state, TOPIC, "WebhookSubscription", record, key=key)
    state.views[TOPIC].apply(key, record)


def _seal(state: State, tenant_id: str, subscription_id: str, sealed: dict[str, str]) -> bytes:
    return _box(state).seal(sealed, tenant_id=tenant_id, provider_id=sealed_as(subscription_id))


# -- endpoints ---------------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    responses=errors.responses(AUTHENTICATED, 403, 409, 413, 422, 503),
    summary="Subscribe to status events",
    description="Creates a subscription: the tenant's status events whose status is among "
    "`event_types` (all when empty) are POSTed to `url`, signed with the subscription's "
    "secret. The secret is shown once, in this answer. A URL that is not http(s) or "
    "resolves to a private, loopback or link-local address answers 422; more than "
    "WEBHOOK_MAX_SUBSCRIPTIONS_PER_TENANT subscriptions answer 409.",
)
async def create_webhook(
    body: WebhookCreate, request: Request, caller: Admin, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    state = request.app.state

    async def create() -> tuple[int, WebhookCreated]:
        limit = state.settings.webhook_max_subscriptions_per_tenant
        if sum(1 for _ in state.views[TOPIC].items_with_prefix(f"{caller.tenant_id}:")) >= limit:
            raise Conflict(f"a tenant may have at most {limit} webhook subscriptions")
        await _check_url(state, body.url)
        subscription_id = str(uuid.uuid4())
        secret = body.secret or SECRET_PREFIX + secrets.token_urlsafe(32)
        now = _now_ms()
        record = {
            "tenant_id": caller.tenant_id,
            "subscription_id": subscription_id,
            "url": body.url,
            "event_types": body.event_types,
            "secret_sealed": _seal(
                state, caller.tenant_id, subscription_id, secrets_to_seal(secret)
            ),
            "enabled": True,
            "description": body.description,
            "created_at": now,
            "updated_at": now,
        }
        await _save(state, record)
        return 201, WebhookCreated(**_out(record).model_dump(), secret=secret)

    return await shown_once(request, caller, idempotency_key, create, _without_secret)


@router.get(
    "",
    response_model=WebhookList,
    responses=errors.responses(AUTHENTICATED, 403),
    summary="The tenant's webhook subscriptions",
    description="Every subscription of the caller's tenant, oldest first. Secrets are never "
    "shown again.",
)
def list_webhooks(request: Request, caller: Admin) -> WebhookList:
    view = request.app.state.views[TOPIC]
    records = [r for _k, r in view.items_with_prefix(f"{caller.tenant_id}:")]
    records = [r for r in records if r["tenant_id"] == caller.tenant_id]
    records.sort(key=lambda r: (r["created_at"], r["subscription_id"]))
    return WebhookList(items=[_out(r) for r in records])


@router.get(
    "/{subscription_id}",
    response_model=WebhookOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422),
    summary="One webhook subscription",
)
def get_webhook(subscription_id: SubscriptionId, request: Request, caller: Admin) -> WebhookOut:
    return _out(_find(request.app.state, caller, subscription_id))


@router.patch(
    "/{subscription_id}",
    response_model=WebhookOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 413, 422, 503),
    summary="Change a webhook subscription",
    description="Changes the fields given (`url`, `event_types`, `enabled`, `description`). "
    "A new URL passes the same checks as at creation. Deliveries already waiting for a "
    "retry go to the current URL; a disabled subscription's pending deliveries are skipped.",
)
async def update_webhook(
    subscription_id: SubscriptionId, body: WebhookUpdate, request: Request, caller: Admin
) -> WebhookOut:
    state = request.app.state
    record = dict(_find(state, caller, subscription_id))
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise Unprocessable("nothing to change: give url, event_types, enabled or description")
    for name in ("url", "event_types", "enabled"):
        if name in changes and changes[name] is None:
            raise Unprocessable(f"{name} cannot be null")
    if "url" in changes:
        await _check_url(state, changes["url"])
    record.update(changes, updated_at=_now_ms())
    await _save(state, record)
    return _out(record)


@router.delete(
    "/{subscription_id}",
    status_code=204,
    response_class=Response,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422, 503),
    summary="Delete a webhook subscription",
    description="Writes a tombstone: no further deliveries are made, and pending retries are "
    "skipped. The delivery log stays in the read model.",
)
async def delete_webhook(
    subscription_id: SubscriptionId, request: Request, caller: Admin
) -> Response:
    state = request.app.state
    _find(state, caller, subscription_id)
    key = subscription_key(caller.tenant_id, subscription_id)
    await produce(state, TOPIC, key=key, value=None)
    state.views[TOPIC].apply(key, None)
    return Response(status_code=204)


@router.post(
    "/{subscription_id}/rotate-secret",
    response_model=SecretRotated,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422, 503),
    summary="Rotate a subscription's signing secret",
    description="Generates a new secret, shown once in this answer. For "
    "WEBHOOK_SECRET_ROTATION_GRACE_SECONDS (24 h by default) deliveries carry two "
    "signatures, one per secret, so receivers can switch without losing any.",
)
async def rotate_secret(
    subscription_id: SubscriptionId,
    request: Request,
    caller: Admin,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    state = request.app.state

    async def rotate() -> tuple[int, SecretRotated]:
        record = dict(_find(state, caller, subscription_id))
        box = _box(state)
        try:
            opened = box.open(
                record["secret_sealed"],
                tenant_id=caller.tenant_id,
                provider_id=sealed_as(subscription_id),
            )
        except SealingError as exc:
            raise Unavailable("the current secret cannot be opened with the shim's keys") from exc
        now = _now_ms()
        grace_ms = state.settings.webhook_secret_rotation_grace_seconds * 1000
        until = now + grace_ms if grace_ms > 0 else None
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        sealed = secrets_to_seal(secret, previous=opened["secret"], previous_until_ms=until)
        record.update(
            secret_sealed=_seal(state, caller.tenant_id, subscription_id, sealed),
            updated_at=now,
        )
        await _save(state, record)
        rotated = SecretRotated(
            subscription_id=subscription_id,
            secret=secret,
            previous_secret_valid_until=_time(until) if until else None,
        )
        return 200, rotated

    return await shown_once(request, caller, idempotency_key, rotate, _without_secret)


@router.get(
    "/{subscription_id}/deliveries",
    response_model=DeliveryLog,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422, 503),
    summary="A subscription's delivery log",
    description="Every delivery attempt (outcome, HTTP status, error, the start of the "
    "receiver's answer), newest first, from the read model the Postgres sink maintains "
    "(written within about a second of the attempt). `delivery_id` keeps one delivery's "
    "attempts; `cursor` is the previous page's `next_cursor`.",
)
def list_deliveries(
    subscription_id: SubscriptionId,
    request: Request,
    caller: Admin,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    delivery_id: Annotated[str | None, Query(max_length=64)] = None,
) -> DeliveryLog:
    state = request.app.state
    _find(state, caller, subscription_id)
    before = _parse_cursor(cursor) if cursor else None
    try:
        rows = read_model.webhook_delivery_log(
            state.engine,
            caller.tenant_id,
            subscription_id,
            limit=limit + 1,
            before=before,
            delivery_id=delivery_id,
        )
    except SQLAlchemyError as exc:
        raise Unavailable("the read model database is unavailable") from exc
    page = rows[:limit]
    more = len(rows) > limit
    return DeliveryLog(
        items=[DeliveryAttemptOut(**row) for row in page],
        next_cursor=_cursor(page[-1]) if more else None,
    )


def _cursor(row: dict[str, Any]) -> str:
    return f"{round(row['occurred_at'].timestamp() * 1000)}~{row['attempt_id']}"


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    at, sep, attempt_id = cursor.partition("~")
    if not sep or not at.isdigit() or not attempt_id:
        raise Unprocessable("cursor: not a cursor this endpoint returned")
    found = read_model.from_epoch_ms(int(at))
    assert found is not None
    return found, attempt_id
