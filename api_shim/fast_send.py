"""POST /api/v1/notifications without FastAPI's per-request machinery (issue 14).

The route stays declared in api_shim.routes: it is what OpenAPI documents, and it serves every
request this layer is not sure of. For the common request (an API key, a JSON body the model
accepts, headers within their documented bounds) this ASGI middleware calls the route's own
function directly (`send_notification`: the same authentication, rate limits, idempotency,
Avro and produce), skipping routing, dependency solving and the middleware stack, which cost
about as much CPU as the send itself (docs/benchmarks.md). Anything else (no key, a bearer
token, a body that fails validation, a header out of bounds, a query string) goes to the
route unchanged, with the body it already read handed back, so every validation answer is
the route's own and nothing is counted twice (nothing is charged before the hand-over).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.auth import authenticate, require_scope
from api_shim.errors import ApiError, api_error_response
from api_shim.metrics import ROUTE_KEY
from api_shim.models import NotificationCreate
from api_shim.routes import send_notification

SEND_PATH = "/api/v1/notifications"
# The headers the route reads, and the bounds its declaration gives them (routes.py,
# idempotency.IdempotencyKey): outside them, the route answers (422).
_WATCHED = (b"x-api-key", b"authorization", b"idempotency-key", b"traceparent", b"content-type")
_MAX_IDEMPOTENCY_KEY = 256
_MAX_TRACEPARENT = 128


class SendFastPath:
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.served = 0  # requests answered here, not by the route (for tests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != SEND_PATH
            or scope.get("query_string")
        ):
            await self.app(scope, receive, send)
            return
        headers = _watched_headers(scope)
        if headers is None or not self._takes(scope, headers):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        model = _valid_body(body) if len(body) <= self.max_body else None
        if model is None:
            await self.app(scope, _replaying(body, receive), send)
            return
        request = Request(scope, _replaying(body, receive))
        self.served += 1
        scope[ROUTE_KEY] = SEND_PATH
        try:
            caller = await authenticate(request, headers[b"x-api-key"], None)
            require_scope(caller, "send")
            response = await send_notification(
                model,
                request,
                caller,
                headers.get(b"idempotency-key"),
                headers.get(b"traceparent"),
            )
        except ApiError as exc:
            response = await api_error_response(request, exc)
        await response(scope, receive, send)

    def _takes(self, scope: Scope, headers: dict[bytes, str]) -> bool:
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        key = headers.get(b"idempotency-key")
        trace = headers.get(b"traceparent")
        return (
            bool(headers.get(b"x-api-key"))
            and b"authorization" not in headers
            and headers.get(b"content-type", "").split(";")[0].strip().lower() == "application/json"
            and length.isdigit()
            and int(length) <= self.max_body
            and (key is None or 1 <= len(key) <= _MAX_IDEMPOTENCY_KEY)
            and (trace is None or len(trace) <= _MAX_TRACEPARENT)
        )


def _watched_headers(scope: Scope) -> dict[bytes, str] | None:
    """The headers the route reads, decoded as Starlette does (latin-1); None when one comes
    twice (which one counts is the route's business)."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WATCHED:
            if name in found:
                return None
            found[name] = value.decode("latin-1")
    return found


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _valid_body(body: bytes) -> NotificationCreate | None:
    """The body as the route would take it (json, then the model in Python mode, as FastAPI
    validates a body parameter), or None for the route to explain why not."""
    try:
        data: Any = json.loads(body)
        return NotificationCreate.model_validate(data)
    except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError too
        return None


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` with the body already read handed back first."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
