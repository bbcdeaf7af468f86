"""The shim's errors and how each becomes a JSON answer.

    ApiError                      every error answered on purpose, as {"error", "message"}
    ├── Unauthorized     401      missing or unknown X-API-Key
    ├── NotFound         404      no such notification for this tenant
    └── Unavailable      503      Kafka did not acknowledge in time, or the read model is down;
                                  retrying with the same Idempotency-Key is safe

Request validation errors answer 422 with one entry per field, named by its dotted path
(`recipients.0.user_id`). Anything else answers 500 without details; the trace is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api_shim.models import ErrorBody, FieldError

log = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = 500
    error = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ApiError):
    status_code = 401
    error = "unauthorized"


class NotFound(ApiError):
    status_code = 404
    error = "not_found"


class Unavailable(ApiError):
    status_code = 503
    error = "unavailable"


def _field_name(loc: tuple[int | str, ...]) -> str:
    # ("body", "recipients", 0, "user_id") -> "recipients.0.user_id"; the body itself -> "body"
    parts = [str(part) for part in loc[1:]] if loc and loc[0] == "body" else list(map(str, loc))
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def field_errors(errors: list[dict[str, Any]]) -> list[FieldError]:
    return [
        FieldError(
            # A body that is not JSON is located at a character position, not a field.
            field="body" if e.get("type") == "json_invalid" else _field_name(tuple(e["loc"])),
            message=_message(e),
        )
        for e in errors
    ]


def error_response(status_code: int, body: ErrorBody, **headers: str) -> JSONResponse:
    return JSONResponse(status_code=status_code, content=body.model_dump(), headers=headers or None)


async def _on_api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "ApiKey"} if isinstance(exc, Unauthorized) else {}
    body = ErrorBody(error=exc.error, message=exc.message)
    return error_response(exc.status_code, body, **headers)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = field_errors(list(exc.errors()))
    fields = ", ".join(d.field for d in detail)
    body = ErrorBody(error="validation_failed", message=f"invalid: {fields}", detail=detail)
    return error_response(422, body)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, ErrorBody(error="internal_error", message="internal error"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the error codes a route can answer."""
    descriptions = {
        401: "Missing or unknown X-API-Key.",
        404: "No such notification for this tenant.",
        422: "The request is invalid; `detail` names each field.",
        503: "Kafka did not acknowledge in time, or a dependency is unreachable. "
        "Retrying with the same Idempotency-Key is safe.",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}
