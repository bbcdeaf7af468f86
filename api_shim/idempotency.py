"""`Idempotency-Key` on every POST: a retry gets the first answer, not a second effect.

The first successful (2xx) answer to a POST with a key is written to shim.idempotency
(compacted, 24 h retention) and every shim process follows that topic (api_shim.idempotency_view,
bounded in time and memory), so a retry that reaches another process gets the same answer. A
retry with the same key but another method, path or body is refused with 422: a client bug.

Whose key: a tenant's (`tenant:key`) for API keys and admin routes; on /me routes one end
user's (`tenant/<subject hash>:key`), so a user cannot replay or probe another user's answer
by guessing the key.

What is kept is small: a route whose answer is derived from the request (the ids of a fan-out)
passes a `Packing` and only the compact form is stored; any answer still over
MAX_KEPT_BODY_BYTES is recorded without its body (a replay gets 409, never a second effect).
Storing never fails the request after its effect: if Kafka refuses the record, the answer
is still given (and kept in this process) and the failure logged.

Two requests with one key in flight at once in one process are serialised (the second waits
and replays the first's answer). Across processes that race is not closed: both may act, and
the pipeline's own dedup (request idempotency keys, deterministic ids) keeps the effect single.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from api_shim.auth import Principal
from api_shim.errors import Conflict, Unavailable, Unprocessable
from api_shim.idempotency_view import fresh
from api_shim.keyed_locks import KeyedLocks
from api_shim.publish import publish

log = logging.getLogger(__name__)

TOPIC = "shim.idempotency"
ME_PREFIX = "/api/v1/me/"
# Well under Kafka's 1 MB record limit, and what one answer may cost every shim process.
MAX_KEPT_BODY_BYTES = 256 * 1024

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=256,
        description="Makes a retried POST safe: the first answer is replayed for 24 h.",
    ),
]


@dataclass(frozen=True)
class Packing:
    """How a route stores its answer compactly: `pack` (JSON-able answer -> compact form) and
    `unpack` (compact form -> the answer), for a replay of the same request."""

    pack: Callable[[Any], Any]
    unpack: Callable[[Any], Any]


_locks = KeyedLocks()


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class StreamedBody:
    """The digest of a body the handler streams (a CSV upload, too large to buffer first):
    the request's `parameters` and every chunk, hashed as the handler reads them. A body not
    read to the end (an upload cancelled mid-way) has only a digest of its parameters; a retry
    that finds a stored answer has its own body read and hashed here to compare."""

    def __init__(self, parameters: str) -> None:
        self.parameters = parameters
        self._sha = hashlib.sha256(parameters.encode() + b"\n")
        self._complete = False

    def update(self, chunk: bytes) -> None:
        self._sha.update(chunk)

    def finish(self) -> None:
        self._complete = True

    def unread_digest(self) -> str:
        return body_sha256(f"{self.parameters}|read-in-part".encode())

    def hexdigest(self) -> str:
        return self._sha.hexdigest() if self._complete else self.unread_digest()

    async def read_all(self, request: Request) -> str:
        async for chunk in request.stream():
            self.update(chunk)
        self.finish()
        return self.hexdigest()


def view_key(request: Request, principal: Principal, key: str) -> str:
    """`tenant:key`, or `tenant/<subject hash>:key` for an end user on /me routes. Tenant ids
    (ID_PATTERN) hold neither ':' nor '/', so the two forms never meet whatever the key is."""
    if principal.kind == "user" and request.url.path.startswith(ME_PREFIX):
        subject = hashlib.sha256(principal.subject.encode()).hexdigest()[:32]
        return f"{principal.tenant_id}/{subject}:{key}"
    return f"{principal.tenant_id}:{key}"


def _kept(status: int, content: Any, packing: Packing | None) -> tuple[str, str]:
    """(body_form, body_json) to store for an answer."""
    form, stored = ("packed", packing.pack(content)) if packing else ("full", content)
    body_json = json.dumps(stored, separators=(",", ":"))
    if len(body_json) > MAX_KEPT_BODY_BYTES:
        log.warning("answer (%d) of %d bytes is not kept for replay", status, len(body_json))
        return "dropped", ""
    return form, body_json


def _replay(stored: dict[str, Any], packing: Packing | None) -> JSONResponse:
    form = stored.get("body_form", "full")
    if form == "dropped":
        raise Conflict(
            f"the request with this Idempotency-Key was carried out (answer "
            f"{stored['status_code']}), but its answer was too large to keep for a replay"
        )
    body = json.loads(stored["body_json"])
    if form == "packed" and packing is not None:
        body = packing.unpack(body)
    return JSONResponse(
        status_code=stored["status_code"],
        content=body,
        headers={"Idempotent-Replayed": "true"},
    )


async def idempotent(
    request: Request,
    principal: Principal,
    key: str | None,
    handler: Callable[[], Awaitable[tuple[int, Any]]],
    *,
    streamed: StreamedBody | None = None,
    packing: Packing | None = None,
) -> JSONResponse:
    """Runs `handler` (returning status code and body) once per key (see `view_key`).

    The request is recognised by the hash of its body (read once and cached by Starlette);
    a handler that streams the body passes `streamed`, which it feeds as it reads.
    """
    if key is None:
        status, body = await handler()
        return JSONResponse(status_code=status, content=jsonable_encoder(body))
    state = request.app.state
    scoped = view_key(request, principal, key)
    digest = None if streamed else body_sha256(await request.body())
    async with _locks.hold(scoped):
        stored = state.views[TOPIC].get(scoped)
        if stored is not None and fresh(stored):
            if streamed is not None:
                digest = (
                    streamed.unread_digest()
                    if stored["request_sha256"] == streamed.unread_digest()
                    else await streamed.read_all(request)
                )
            if (stored["method"], stored["path"], stored["request_sha256"]) != (
                request.method,
                request.url.path,
                digest,
            ):
                raise Unprocessable(
                    "this Idempotency-Key was used for a different request; "
                    "use a new key for a new request"
                )
            return _replay(stored, packing)
        status, body = await handler()
        content = jsonable_encoder(body)
        if streamed is not None:
            digest = streamed.hexdigest()
        if 200 <= status < 300:
            form, body_json = _kept(status, content, packing)
            record = {
                "tenant_id": principal.tenant_id,
                "idempotency_key": key,
                "method": request.method,
                "path": request.url.path,
                "request_sha256": digest,
                "status_code": status,
                "body_json": body_json,
                "created_at": int(time.time() * 1000),
                "body_form": form,
            }
            await _keep(state, scoped, record)
        return JSONResponse(status_code=status, content=content)


async def _keep(state: Any, scoped: str, record: dict[str, Any]) -> None:
    """Kept here first, then on the topic; the effect has happened, so a failure to store it
    must not turn the answer into an error that invites a second effect."""
    state.views[TOPIC].apply(scoped, record)
    try:
        await publish(state, TOPIC, "IdempotentResponse", record, key=scoped)
    except Unavailable as exc:
        log.warning("answer for %s kept in this process only: %s", scoped, exc.message)
