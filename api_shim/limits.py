"""Request-size limits, enforced while the body streams in (not after it is buffered).

A declared Content-Length over the limit is refused before a byte is read; a chunked body is
counted as it arrives and cut off with 413 once it passes the limit. The bulk CSV upload has
its own, larger limit (SHIM_MAX_CSV_BYTES); everything else SHIM_MAX_BODY_BYTES.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BULK_PATH_PREFIX = "/api/v1/bulk"


class BodyTooLarge(HTTPException):
    """Raised from `receive` mid-body. An HTTPException, so FastAPI's body parsing passes it
    on (it turns other exceptions into 400) and the shim's handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


def _too_large_response(limit: int) -> tuple[dict[str, object], bytes]:
    body = json.dumps(
        {
            "error": "payload_too_large",
            "message": f"the request body is over the limit of {limit} bytes",
            "detail": [],
        }
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return start, body


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        start, body = _too_large_response(limit)
        await send(start)
        await send({"type": "http.response.body", "body": body})


def limit_for_path(max_body: int, max_csv: int) -> Callable[[str], int]:
    return lambda path: max_csv if path.startswith(BULK_PATH_PREFIX) else max_body
