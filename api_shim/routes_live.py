"""Live updates over Server-Sent Events: a user's in-app messages and read-state changes, and a
tenant's status events. The Kafka side is api_shim.live; docs/api.md ("Live updates")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from confluent_kafka import KafkaException
from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api_shim import errors, live
from api_shim.auth import Reader, User
from api_shim.errors import AUTHENTICATED, BadRequest, Unavailable
from api_shim.me_models import NotificationStatus
from api_shim.models import Id

router = APIRouter()

RETRY_MS = 2000  # how long a browser's EventSource waits before reconnecting

LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        max_length=4096,
        description="The `id` of the last event received: the stream resumes right after it. "
        "Without it, the stream starts now.",
    ),
]


def _sse_doc(events: str, example: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": f"A `text/event-stream` (Server-Sent Events). {events} Each event's "
            "`id` is the stream position after it (send it back as `Last-Event-ID`); a comment "
            "line is sent every SHIM_SSE_KEEPALIVE_SECONDS while nothing happens.",
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


def _open_streams(state: Any) -> set[live.LiveStream]:
    streams: set[live.LiveStream] | None = getattr(state, "live_streams", None)
    if streams is None:
        streams = set()
        state.live_streams = streams
    return streams


async def serve(
    request: Request, sources: list[live.Source], last_event_id: str | None
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
    streams = _open_streams(state)
    if len(streams) >= settings.shim_sse_max_streams:
        raise Unavailable("too many live streams are open on this server; retry later")
    stream = live.LiveStream(settings, state.codec, sources, resume)
    streams.add(stream)

    def close() -> None:
        stream.close()
        streams.discard(stream)

    try:
        start = await run_in_threadpool(stream.open)
    except KafkaException as exc:
        close()
        raise Unavailable("Kafka is unavailable; retry later") from exc
    stream.start(asyncio.get_running_loop())
    return SseResponse(_events(stream, start, settings.shim_sse_keepalive_seconds), close)


async def _events(stream: live.LiveStream, start: str, keepalive: float) -> AsyncIterator[str]:
    # The start position first: a client that sees no event before reconnecting resumes here.
    yield f"retry: {RETRY_MS}\nid: {start}\n: stream open\n\n"
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
)
async def my_stream(request: Request, caller: User, last_event_id: LastEventId = None) -> Any:
    assert caller.user_id is not None
    topics = request.app.state.topics
    sources = live.user_sources(topics, caller.tenant_id, caller.user_id)
    return await serve(request, sources, last_event_id)


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
    description="For API keys with the `read` scope and users with the `viewer` or `admin` role.",
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
    return await serve(request, sources, last_event_id)
