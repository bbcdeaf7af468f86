"""User endpoints (JWT users only): my notifications, unread count, read/unread/delete, and
my preferences. Documented in docs/api.md ("User endpoints").

Reads come from the read model the Postgres sink maintains. Every change is an event, never a
database write: inbox actions are status events (`read`, `unread`, `deleted`) on
notifications.status keyed by notification id, preferences a Preferences record on
users.preferences keyed `tenant:user`. The sink, the pipeline and the live streams follow them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from api_shim import errors
from api_shim.auth import Principal, User
from api_shim.errors import AUTHENTICATED, BadRequest, Conflict, NotFound, Unavailable
from api_shim.idempotency import IdempotencyKey, idempotent
from api_shim.me_models import (
    InAppContent,
    InboxAction,
    InboxActionAccepted,
    MarkedAllRead,
    MyNotification,
    MyNotificationPage,
    NotificationStatus,
    PreferencesIn,
    PreferencesOut,
    UnreadCount,
)
from api_shim.models import Channel
from api_shim.publish import publish
from connectors import read_model
from core.ids import recipient_key, status_event_id

router = APIRouter()

DEFAULT_PAGE = 50
MAX_PAGE = 100
# Mark-all-read writes one status event per message: at most this many per call (`more` says
# whether unread messages remained).
MARK_ALL_READ_MAX = 1000
STAGE = "inbox"  # the `stage` of the status events the inbox actions write

NotificationId = Annotated[str, Path(min_length=1, max_length=256)]
T = TypeVar("T")


def _user_id(caller: Principal) -> str:
    assert caller.user_id is not None  # the User dependency admits users only
    return caller.user_id


async def _read(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except SQLAlchemyError as exc:
        raise Unavailable("the read model database is unavailable") from exc


# -- cursors -------------------------------------------------------------------------------------


def encode_cursor(requested_at: datetime, notification_id: str) -> str:
    micros = int(requested_at.timestamp() * 1_000_000)
    raw = f"{micros}|{notification_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, sep, notification_id = raw.partition("|")
        if not sep or not notification_id:
            raise ValueError("no separator")
        return datetime.fromtimestamp(int(micros) / 1_000_000, tz=UTC), notification_id
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError) as exc:
        raise BadRequest(
            "cursor is not valid: pass the next_cursor of a previous page unchanged"
        ) from exc


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # a date or time without a zone is UTC
    return value


# -- reading -------------------------------------------------------------------------------------


def _item(row: dict[str, Any]) -> MyNotification:
    content = None
    if row["in_inbox"]:
        try:
            data = json.loads(row["data_json"] or "{}")
        except ValueError:
            data = {}
        content = InAppContent(
            title=row["title"],
            body=row["body"],
            html=row["html"],
            data=data if isinstance(data, dict) else {},
            delivered_at=row["delivered_at"],
        )
    return MyNotification(
        notification_id=row["notification_id"],
        request_id=row["request_id"],
        batch_id=row["batch_id"],
        channel=row["channel"],
        status=row["status"],
        reason=row["reason"],
        requested_at=row["request_occurred_at"],
        updated_at=row["updated_at"],
        read_at=row["read_at"],
        in_app=content,
    )


@router.get(
    "/api/v1/me/notifications",
    response_model=MyNotificationPage,
    responses=errors.responses(AUTHENTICATED, 400, 403, 422, 503),
    tags=["me"],
    summary="My notifications",
    description="The caller's notifications on every channel, newest request first, from the "
    "read model the Postgres sink maintains (deleted ones excluded); in-app messages carry "
    "their content and read state. Filters combine with AND; `status` and `channel` may be "
    "repeated. Pages follow `next_cursor`.",
)
async def my_notifications(
    request: Request,
    caller: User,
    status: Annotated[
        list[NotificationStatus] | None, Query(description="Headline status (repeatable).")
    ] = None,
    channel: Annotated[list[Channel] | None, Query(description="Channel (repeatable).")] = None,
    since: Annotated[
        datetime | None,
        Query(description="Requested at or after (ISO 8601 date or time; no zone: UTC)."),
    ] = None,
    until: Annotated[datetime | None, Query(description="Requested before (exclusive).")] = None,
    unread: Annotated[
        bool | None,
        Query(description="true: unread in-app messages only; false: read in-app messages only."),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=600)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> MyNotificationPage:
    after = decode_cursor(cursor) if cursor else None
    rows = await _read(
        read_model.user_notifications,
        request.app.state.engine,
        caller.tenant_id,
        _user_id(caller),
        statuses=[str(s) for s in status or ()],
        channels=[str(c) for c in channel or ()],
        since=_utc(since),
        until=_utc(until),
        unread=unread,
        after=after,
        limit=limit + 1,  # one more tells whether there is a next page
    )
    items = [_item(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last["request_occurred_at"], last["notification_id"])
    return MyNotificationPage(items=items, next_cursor=next_cursor)


@router.get(
    "/api/v1/me/notifications/unread-count",
    response_model=UnreadCount,
    responses=errors.responses(AUTHENTICATED, 403, 503),
    tags=["me"],
    summary="How many of my in-app messages are unread",
)
async def unread_count(request: Request, caller: User) -> UnreadCount:
    count = await _read(
        read_model.user_unread_count, request.app.state.engine, caller.tenant_id, _user_id(caller)
    )
    return UnreadCount(unread=count)


# -- inbox actions: status events ----------------------------------------------------------------


def action_event(
    notification: dict[str, Any], status: str, occurrence: str, now_ms: int
) -> dict[str, Any]:
    """The StatusEvent of a user's action. `occurrence` tells apart two clicks on the same
    action (read, unread, read again) while a retry with the same Idempotency-Key names the
    same occurrence, so it carries the same event id and the sink stores it once."""
    nid = notification["notification_id"]
    return {
        "event_id": status_event_id(nid, status, 0, occurrence),
        "notification_id": nid,
        "request_id": notification["request_id"],
        "tenant_id": notification["tenant_id"],
        "batch_id": notification["batch_id"],
        "channel": notification["channel"],
        "recipient_id": notification["recipient_id"],
        "status": status,
        "reason": None,
        "retriable": False,
        "provider": None,
        "provider_message_id": None,
        "stage": STAGE,
        "attempt": 0,
        "deferred_until": None,
        "request_occurred_at": int(notification["request_occurred_at"].timestamp() * 1000),
        "occurred_at": now_ms,
    }


def _occurrence(idempotency_key: str | None) -> str:
    return f"key:{idempotency_key}" if idempotency_key else f"at:{uuid.uuid4().hex}"


async def _emit(state: Any, event: dict[str, Any]) -> None:
    await publish(state, "notifications.status", "StatusEvent", event, key=event["notification_id"])


async def _act(
    request: Request,
    caller: Principal,
    idempotency_key: str | None,
    notification_id: str,
    status: InboxAction,
) -> JSONResponse:
    state = request.app.state

    async def act() -> tuple[int, InboxActionAccepted]:
        found = await _read(
            read_model.user_notification,
            state.engine,
            caller.tenant_id,
            _user_id(caller),
            notification_id,
        )
        if found is None:
            raise NotFound(f"no notification {notification_id!r}")
        if status in ("read", "unread") and found["channel"] != "in_app":
            raise Conflict(
                f"notification {notification_id!r} is a {found['channel']} notification; "
                "only in-app messages have a read state"
            )
        event = action_event(found, status, _occurrence(idempotency_key), _now_ms())
        await _emit(state, event)
        return 202, InboxActionAccepted(
            notification_id=notification_id, status=status, event_id=event["event_id"]
        )

    return await idempotent(request, caller, idempotency_key, act)


def _now_ms() -> int:
    return int(time.time() * 1000)


_ACTION_RESPONSES = errors.responses(AUTHENTICATED, 403, 404, 409, 422, 503)


@router.post(
    "/api/v1/me/notifications/read-all",
    status_code=202,
    response_model=MarkedAllRead,
    responses=errors.responses(AUTHENTICATED, 403, 422, 503),
    tags=["me"],
    summary="Mark all my in-app messages read",
    description="Writes one `read` status event per unread in-app message the read model "
    f"knows, at most {MARK_ALL_READ_MAX} per call (newest first; `more` is true when more "
    "remained). Answers once Kafka has acknowledged every event.",
)
async def mark_all_read(
    request: Request, caller: User, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    state = request.app.state

    async def act() -> tuple[int, MarkedAllRead]:
        unread = await _read(
            read_model.user_unread,
            state.engine,
            caller.tenant_id,
            _user_id(caller),
            MARK_ALL_READ_MAX + 1,
        )
        chosen = unread[:MARK_ALL_READ_MAX]
        occurrence, now = _occurrence(idempotency_key), _now_ms()
        # Produced together and acknowledged together; after a 503 a retry with the same
        # Idempotency-Key writes the same event ids, which the sink stores once.
        await asyncio.gather(
            *(_emit(state, action_event(n, "read", occurrence, now)) for n in chosen)
        )
        return 202, MarkedAllRead(marked=len(chosen), more=len(unread) > MARK_ALL_READ_MAX)

    return await idempotent(request, caller, idempotency_key, act)


@router.post(
    "/api/v1/me/notifications/{notification_id}/read",
    status_code=202,
    response_model=InboxActionAccepted,
    responses=_ACTION_RESPONSES,
    tags=["me"],
    summary="Mark one of my in-app messages read",
    description="Writes a `read` status event (409 for a notification on another channel).",
)
async def mark_read(
    notification_id: NotificationId,
    request: Request,
    caller: User,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _act(request, caller, idempotency_key, notification_id, "read")


@router.post(
    "/api/v1/me/notifications/{notification_id}/unread",
    status_code=202,
    response_model=InboxActionAccepted,
    responses=_ACTION_RESPONSES,
    tags=["me"],
    summary="Mark one of my in-app messages unread",
    description="Writes an `unread` status event (409 for a notification on another channel).",
)
async def mark_unread(
    notification_id: NotificationId,
    request: Request,
    caller: User,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _act(request, caller, idempotency_key, notification_id, "unread")


@router.delete(
    "/api/v1/me/notifications/{notification_id}",
    status_code=202,
    response_model=InboxActionAccepted,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422, 503),
    tags=["me"],
    summary="Delete one of my notifications",
    description="Writes a `deleted` status event; the notification then disappears from my "
    "notifications and the unread count. Deleting it again answers 404.",
)
async def delete_notification(
    notification_id: NotificationId,
    request: Request,
    caller: User,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _act(request, caller, idempotency_key, notification_id, "deleted")


# -- preferences ---------------------------------------------------------------------------------


def _preferences_out(record: dict[str, Any], source: str) -> PreferencesOut:
    fields = {name: record[name] for name in PreferencesOut.model_fields if name in record}
    fields.pop("updated_at", None)
    updated_at = record.get("updated_at") if source == "user" else None
    return PreferencesOut.model_validate(
        {
            **fields,
            "source": source,
            "updated_at": datetime.fromtimestamp(updated_at / 1000, tz=UTC) if updated_at else None,
        }
    )


@router.get(
    "/api/v1/me/preferences",
    response_model=PreferencesOut,
    responses=errors.responses(AUTHENTICATED, 403),
    tags=["me"],
    summary="My notification preferences",
    description="The user's record on users.preferences; without one, the tenant's default "
    "preferences (`source` says which).",
)
async def get_preferences(request: Request, caller: User) -> PreferencesOut:
    views = request.app.state.views
    own = views["users.preferences"].get(recipient_key(caller.tenant_id, _user_id(caller)))
    if own is not None:
        return _preferences_out(own, "user")
    tenant = views["config.tenants"].get(caller.tenant_id)
    defaults = (tenant or {}).get("default_preferences")
    if defaults is not None:
        return _preferences_out(defaults, "tenant_default")
    return PreferencesOut(source="none")


@router.put(
    "/api/v1/me/preferences",
    response_model=PreferencesOut,
    responses=errors.responses(AUTHENTICATED, 403, 413, 422, 503),
    tags=["me"],
    summary="Replace my notification preferences",
    description="Writes the whole record to users.preferences (keyed `tenant:user`, murmur2 "
    "partitioned like the stage topics) and answers once Kafka has acknowledged it. The "
    "pipeline applies it to notifications it has not yet enriched.",
)
async def put_preferences(body: PreferencesIn, request: Request, caller: User) -> PreferencesOut:
    state = request.app.state
    key = recipient_key(caller.tenant_id, _user_id(caller))
    record = body.record(caller.tenant_id, _user_id(caller), _now_ms())
    await publish(state, "users.preferences", "Preferences", record, key=key)
    state.views["users.preferences"].apply(key, record)
    return _preferences_out(record, "user")
