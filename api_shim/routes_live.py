"""Live updates over Server-Sent Events: a user's in-app messages and read-state changes, and a
tenant's status events. The Kafka side is api_shim.live; docs/api.md ("Live updates")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from confluent_kafka import KafkaException
from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api_shim import errors, live
from api_shim.auth import Principal, Reader, User
from api_shim.errors import AUTHENTICATED, BadRequest, Unavailable
from api_shim.live_slots import StreamSlots
from api_shim.me_models import NotificationStatus
from api_shim.models import Id

router = APIRouter()

RETRY_MS = 2000  # how long a browser's EventSource waits before reconnecting

LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        max_length=4096,
        description="The `id` of the last event received: the stream resumes right after it "
        "(at most SHIM_SSE_REPLAY_MAX_MESSAGES per partition and SHIM_SSE_REPLAY_MAX_SECONDS "
        "back; an older id resumes at that bound after a `replay_truncated` event). "
        "Without it, the stream starts now.",
    ),
]


def _sse_doc(events: str, example: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": f"A `text/event-stream` (Server-Sent Events). {events} Each event's "
            "`id` is the stream position after it (send it back as `Last-Event-ID`); a comment "
            "line is sent every SHIM_SSE_KEEPALIVE_SECONDS while nothing happens. A resume that "
            "could not start where asked (past the replay bound, or removed by retention) "
            "begins with a `replay_truncated` event (`resumed_from`: the position it starts "
            "at).",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": example}},
        }
    }


class SseResponse(StreamingResponse):
    """A StreamingResponse that closes its stream whatever happens (a client gone before the
    first byte never starts the generator, whose `finally` would otherwise do it)."""

    def __init__(self, content: AsyncIterator[str], on_close: Any) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _slots(state: Any) -> StreamSlots:
    slots: StreamSlots | None = getattr(state, "live_slots", None)
    if slots is None:
        slots = StreamSlots(state.settings)
        state.live_slots = slots
    return slots


async def serve(
    request: Request, caller: Principal, sources: list[live.Source], last_event_id: str | None
) -> SseResponse:
    """Opens a stream of `sources` from `last_event_id` (or now) and answers with it."""
    state = request.app.state
    settings = state.settings
    resume = None
    if last_event_id is not None:
        try:
            resume = live.parse_position(last_event_id, live.expected_positions(sources))
        except ValueError as exc:
            raise BadRequest(f"Last-Event-ID is not valid: {exc}") from exc
    release = _slots(state).take(caller)
    stream = live.LiveStream(settings, state.codec, sources, resume)

    def close() -> None:
        stream.close()
        release()

    try:
        start = await run_in_threadpool(stream.open)
    except BaseException as exc:  # whatever stops it, the slot is given back
        close()
        if isinstance(exc, KafkaException):
            raise Unavailable("Kafka is unavailable; retry later") from exc
        raise
    stream.start(asyncio.get_running_loop())
    return SseResponse(_events(stream, start, settings.shim_sse_keepalive_seconds), close)


def _truncated(start: str) -> str:
    """Said when a resume starts later than its Last-Event-ID: the events in between are not
    sent (the REST history has them)."""
    data = {
        "resumed_from": start,
        "message": "Last-Event-ID is older than this stream replays; events before "
        "resumed_from are not sent",
    }
    return f"id: {start}\nevent: replay_truncated\ndata: {json.dumps(data)}\n\n"


async def _events(stream: live.LiveStream, start: str, keepalive: float) -> AsyncIterator[str]:
    # The start position first: a client that sees no event before reconnecting resumes here.
    yield f"retry: {RETRY_MS}\nid: {start}\n: stream open\n\n"
    if stream.truncated:
        yield _truncated(start)
    while True:
        item = await stream.next(keepalive)
        if item is None:
            yield ": keepalive\n\n"
        elif isinstance(item, live.Failure):
            return  # the client reconnects with its last id
        else:
            event, position = item
            yield live.format_event(event, position)


@router.get(
    "/api/v1/me/stream",
    response_class=SseResponse,
    status_code=200,
    responses={
        **_sse_doc(
            "`message` events carry an in-app message placed in the user's inbox "
            "(notification_id, title, body, html, data, created_at); `read_state` events a "
            "read, unread or deleted status event of one of the user's notifications "
            "(notification_id, status, event_id, occurred_at).",
            'id: i1:8,s0:40,s1:12,s2:30,s3:9\nevent: message\ndata: {"notification_id": '
            '"...", "title": "Hi", "body": "Your order shipped", "html": null, "data": {}, '
            '"created_at": "2024-05-01T12:00:00.123000Z"}\n\n',
        ),
        **errors.responses(AUTHENTICATED, 400, 403, 422, 503),
    },
    tags=["live"],
    summary="Live stream of my in-app messages and read-state changes",
    description="429 (with Retry-After) past SHIM_SSE_MAX_STREAMS_PER_PRINCIPAL streams for "
    "you or SHIM_SSE_MAX_STREAMS_PER_TENANT for your tenant.",
)
async def my_stream(request: Request, caller: User, last_event_id: LastEventId = None) -> Any:
    assert caller.user_id is not None
    topics = request.app.state.topics
    sources = live.user_sources(topics, caller.tenant_id, caller.user_id)
    return await serve(request, caller, sources, last_event_id)


@router.get(
    "/api/v1/events/stream",
    response_class=SseResponse,
    status_code=200,
    responses={
        **_sse_doc(
            "`status` events carry one of the tenant's status events as on "
            "notifications.status (times as ISO 8601).",
            'id: s0:41,s1:12,s2:30,s3:9\nevent: status\ndata: {"event_id": "...", '
            '"notification_id": "...", "status": "delivered", ...}\n\n',
        ),
        **errors.responses(AUTHENTICATED, 400, 403, 422, 503),
    },
    tags=["live"],
    summary="Live stream of my tenant's status events",
    description="For API keys with the `read` scope and users with the `viewer` or `admin` role. "
    "429 (with Retry-After) past SHIM_SSE_MAX_STREAMS_PER_PRINCIPAL streams for the key or "
    "user, or SHIM_SSE_MAX_STREAMS_PER_TENANT for the tenant.",
)
async def tenant_stream(
    request: Request,
    caller: Reader,
    status: Annotated[
        list[NotificationStatus] | None, Query(description="Only these statuses (repeatable).")
    ] = None,
    batch_id: Annotated[Id | None, Query(description="Only this batch's notifications.")] = None,
    last_event_id: LastEventId = None,
) -> Any:
    statuses = frozenset(str(s) for s in status or ())
    sources = live.tenant_sources(request.app.state.topics, caller.tenant_id, statuses, batch_id)
    return await serve(request, caller, sources, last_event_id)
