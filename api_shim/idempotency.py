"""`Idempotency-Key` on every POST: a retry gets the first answer, not a second effect.

The first successful (2xx) answer to a POST with a key is written to shim.idempotency
(compacted, 24 h retention) keyed `tenant:key`, and every shim process follows that topic
(api_shim.views), so a retry that reaches another process gets the same answer. A retry with
the same key but another method, path or body is refused with 422: that is a client bug.

Two requests with one key in flight at once in one process are serialised (the second waits
and replays the first's answer). Across processes that race is not closed: both may act, and
the pipeline's own dedup (request idempotency keys, deterministic ids) keeps the effect single.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from api_shim.auth import Principal
from api_shim.errors import Unprocessable
from api_shim.publish import publish

TOPIC = "shim.idempotency"
TTL_MS = 24 * 3600 * 1000

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=256,
        description="Makes a retried POST safe: the first answer is replayed for 24 h.",
    ),
]

_locks: dict[str, asyncio.Lock] = {}
_lock_users: dict[str, int] = {}  # holders and waiters per key: idle locks are dropped


def fresh(record: dict[str, Any], now_ms: int | None = None) -> bool:
    """Answers older than the TTL are forgotten even before compaction removes them."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return now_ms - record["created_at"] < TTL_MS


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def idempotent(
    request: Request,
    principal: Principal,
    key: str | None,
    handler: Callable[[], Awaitable[tuple[int, Any]]],
    *,
    request_sha256: str | None = None,
) -> JSONResponse:
    """Runs `handler` (returning status code and body) once per tenant and key.

    `request_sha256` defaults to the hash of the request body (read once and cached by
    Starlette); a streamed upload passes its own.
    """
    if key is None:
        status, body = await handler()
        return JSONResponse(status_code=status, content=jsonable_encoder(body))
    state = request.app.state
    view_key = f"{principal.tenant_id}:{key}"
    digest = request_sha256 or body_sha256(await request.body())
    lock = _locks.setdefault(view_key, asyncio.Lock())
    _lock_users[view_key] = _lock_users.get(view_key, 0) + 1
    async with lock:
        try:
            stored = state.views[TOPIC].get(view_key)
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
                return JSONResponse(
                    status_code=stored["status_code"],
                    content=json.loads(stored["body_json"]),
                    headers={"Idempotent-Replayed": "true"},
                )
            status, body = await handler()
            content = jsonable_encoder(body)
            if 200 <= status < 300:
                record = {
                    "tenant_id": principal.tenant_id,
                    "idempotency_key": key,
                    "method": request.method,
                    "path": request.url.path,
                    "request_sha256": digest,
                    "status_code": status,
                    "body_json": json.dumps(content, separators=(",", ":")),
                    "created_at": int(time.time() * 1000),
                }
                await publish(state, TOPIC, "IdempotentResponse", record, key=view_key)
                state.views[TOPIC].apply(view_key, record)
            return JSONResponse(status_code=status, content=content)
        finally:
            _lock_users[view_key] -= 1
            if not _lock_users[view_key]:
                del _lock_users[view_key], _locks[view_key]
