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

import asyncio
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


_locks: dict[str, asyncio.Lock] = {}
_lock_users: dict[str, int] = {}  # holders and waiters per key: idle locks are dropped


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


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
    request_sha256: str | None = None,
    packing: Packing | None = None,
) -> JSONResponse:
    """Runs `handler` (returning status code and body) once per key (see `view_key`).

    `request_sha256` defaults to the hash of the request body (read once and cached by
    Starlette); a streamed upload passes its own.
    """
    if key is None:
        status, body = await handler()
        return JSONResponse(status_code=status, content=jsonable_encoder(body))
    state = request.app.state
    scoped = view_key(request, principal, key)
    digest = request_sha256 or body_sha256(await request.body())
    lock = _locks.setdefault(scoped, asyncio.Lock())
    _lock_users[scoped] = _lock_users.get(scoped, 0) + 1
    async with lock:
        try:
            stored = state.views[TOPIC].get(scoped)
            if stored is not None and fresh(stored):
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
        finally:
            _lock_users[scoped] -= 1
            if not _lock_users[scoped]:
                del _lock_users[scoped], _locks[scoped]


async def _keep(state: Any, scoped: str, record: dict[str, Any]) -> None:
    """Kept here first, then on the topic; the effect has happened, so a failure to store it
    must not turn the answer into an error that invites a second effect."""
    state.views[TOPIC].apply(scoped, record)
    try:
        await publish(state, TOPIC, "IdempotentResponse", record, key=scoped)
    except Unavailable as exc:
        log.warning("answer for %s kept in this process only: %s", scoped, exc.message)
