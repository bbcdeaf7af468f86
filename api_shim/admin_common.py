"""What every admin endpoint shares: writing a configuration event and answering once.

A write is a record on its compacted topic, acknowledged by Kafka, then applied to this
process's view so the next request sees it (other shim processes read it from the topic).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from api_shim.auth import Principal
from api_shim.errors import InvalidField
from api_shim.idempotency import idempotent
from api_shim.publish import produce, publish
from api_shim.views import CompactedView

# Ids that become part of a Kafka key (`tenant:id`): no ':' and nothing exotic.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def id_path(description: str) -> Any:
    return Path(pattern=ID_PATTERN, description=description)


TenantIdPath = Annotated[str, id_path("The tenant's id.")]
KeyIdPath = Annotated[str, id_path("The API key's public id.")]
TemplateIdPath = Annotated[str, id_path("The template's id.")]
ProviderIdPath = Annotated[str, id_path("The tenant's name for the provider configuration.")]
RuleIdPath = Annotated[str, id_path("The trigger rule's id.")]
VersionPath = Annotated[int, Path(ge=1, le=1_000_000, description="A version number.")]


# 422 naming one field of the request.
FieldProblem = InvalidField


def now_ms() -> int:
    return int(time.time() * 1000)


def as_datetime(epoch_ms: int | None) -> datetime | None:
    return None if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, UTC)


def view(request: Request, topic: str) -> CompactedView:
    found: CompactedView = request.app.state.views[topic]
    return found


async def write(
    request: Request, topic: str, schema: str, key: str, record: dict[str, Any]
) -> dict[str, Any]:
    """Produce the record (422 naming the field if its schema refuses it, 503 if Kafka does
    not acknowledge), then apply it to the view."""
    await publish(request.app.state, topic, schema, record, key=key)
    view(request, topic).apply(key, record)
    return record


async def tombstone(request: Request, topic: str, key: str) -> None:
    await produce(request.app.state, topic, key=key, value=None)
    view(request, topic).apply(key, None)


async def shown_once(
    request: Request,
    caller: Principal,
    idempotency_key: str | None,
    handler: Callable[[], Awaitable[tuple[int, Any]]],
    redact: Callable[[Any], Any],
) -> JSONResponse:
    """`idempotent` for answers that carry a secret shown once (a new API key).

    The answer kept on shim.idempotency for replays is `redact(body)`: the secret must never
    reach a topic. The first caller gets the whole body; a replay gets the redacted one."""
    first: list[tuple[int, Any]] = []

    async def run() -> tuple[int, Any]:
        status, body = await handler()
        first.append((status, body))
        return status, redact(body)

    response = await idempotent(request, caller, idempotency_key, run)
    if not first:  # replayed
        return response
    status, body = first[0]
    return JSONResponse(status_code=status, content=jsonable_encoder(body))
