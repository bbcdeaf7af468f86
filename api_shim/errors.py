"""The shim's errors and how each becomes a JSON answer.

    ApiError                      every error answered on purpose, as {"error", "message"}
    ├── BadRequest       400      a well-formed request the shim cannot act on (bad CSV, ...)
    ├── Unauthorized     401      no credentials, or an unknown/revoked key or a bad token
    ├── Forbidden        403      valid credentials without the scope or role needed
    ├── NotFound         404      no such object for this tenant (another tenant's too)
    ├── Conflict         409      the object exists, or the state does not allow it
    ├── PayloadTooLarge  413      the body is over the size limit
    ├── Unprocessable    422      semantically invalid (Idempotency-Key reused with another body)
    ├── InvalidField     422      one field refused, named in `detail` (a record its schema
    │                             refuses, a provider setting, an unreachable webhook URL)
    ├── TooManyRequests  429      over the tenant's or key's rate limit; Retry-After says when
    └── Unavailable      503      Kafka did not acknowledge in time, or the read model is down;
                                  retrying with the same Idempotency-Key is safe

Request validation errors answer 422 with one entry per field, named by its dotted path
(`recipients.0.user_id`). Anything else answers 500 without details; the trace is logged.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_shim.models import ErrorBody, FieldError

log = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = 500
    error = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status_code = 400
    error = "bad_request"


class Unauthorized(ApiError):
    status_code = 401
    error = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    error = "forbidden"


class NotFound(ApiError):
    status_code = 404
    error = "not_found"


class Conflict(ApiError):
    status_code = 409
    error = "conflict"


class PayloadTooLarge(ApiError):
    status_code = 413
    error = "payload_too_large"


class Unprocessable(ApiError):
    status_code = 422
    error = "unprocessable"


class InvalidField(ApiError):
    """422 naming one field of the request (`detail[0].field`), like request validation."""

    status_code = 422
    error = "validation_failed"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class TooManyRequests(ApiError):
    status_code = 429
    error = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


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


async def api_error_response(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if isinstance(exc, InvalidField):
        detail = [FieldError(field=exc.field, message=exc.problem)]
        return error_response(
            exc.status_code, ErrorBody(error=exc.error, message=exc.message, detail=detail)
        )
    headers = (
        {"WWW-Authenticate": 'ApiKey, Bearer realm="notifications"'}
        if isinstance(exc, Unauthorized)
        else {}
    )
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    body = ErrorBody(error=exc.error, message=exc.message)
    return error_response(exc.status_code, body, **headers)


_HTTP_ERRORS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method, body over the limit) in our shape,
    with their headers: a 405 says which methods the path allows (`Allow`, RFC 9110 15.5.6)."""
    assert isinstance(exc, StarletteHTTPException)
    error = _HTTP_ERRORS.get(exc.status_code, "error")
    body = ErrorBody(error=error, message=str(exc.detail))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(exc.status_code, body, **headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives this path. Starlette's own `Allow` names only
    the first route that matched the path, and FastAPI makes one route per method."""
    path = request.url.path
    for pattern, methods in _documented_methods(request.app):
        if pattern.fullmatch(path):
            return methods
    return []


_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _documented_methods(app: FastAPI) -> list[tuple[re.Pattern[str], list[str]]]:
    cached: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allow", None)
    if cached is None:
        cached = []
        paths = app.openapi().get("paths", {})
        # Literal paths first: /notifications/batch is not /notifications/{notification_id}.
        for template, operations in sorted(paths.items(), key=lambda p: p[0].count("{")):
            regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
            methods = sorted(m.upper() for m in operations if m in _METHODS)
            cached.append((re.compile(regex), methods))
        app.state.allow = cached
    return cached


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = field_errors(list(exc.errors()))
    fields = ", ".join(d.field for d in detail)
    body = ErrorBody(error="validation_failed", message=f"invalid: {fields}", detail=detail)
    return error_response(422, body)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, ErrorBody(error="internal_error", message="internal error"))


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def _one_error_model(app: FastAPI) -> None:
    """FastAPI documents a 422 of its own shape (`HTTPValidationError`: loc/msg/type) on every
    route that takes input; the shim answers `ErrorBody` (`_on_validation_error`). Rewrite
    those entries once, when the schema is first built, so the document says what is sent."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if "requestBody" in operation:
                    # Starlette answers 400 for a body it cannot decode (not UTF-8 JSON).
                    operation["responses"].setdefault("400", _body_unreadable())
                answer = (operation.get("responses") or {}).get("422")
                if not answer:
                    continue
                content = answer.get("content", {}).get("application/json", {})
                if content.get("schema", {}).get("$ref") == _FASTAPI_422:
                    content["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
                    answer["description"] = responses(422)[422]["description"]
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _body_unreadable() -> dict[str, Any]:
    return {
        "description": "The body could not be read (for example, not UTF-8).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


def install(app: FastAPI) -> None:
    _one_error_model(app)
    app.add_exception_handler(ApiError, api_error_response)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)


# Pass to `responses()` for any authenticated endpoint: adds 401 and 429.
AUTHENTICATED = 0


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the error codes a route can answer."""
    descriptions = {
        400: "The request cannot be acted on; `message` says why.",
        401: "No credentials, an unknown or revoked API key, or an invalid, expired or "
        "wrongly-signed bearer token.",
        403: "The credentials lack the scope or role this endpoint needs.",
        404: "No such object for this tenant (another tenant's objects are not found either).",
        409: "The object already exists, or its state does not allow this.",
        413: "The body is over the size limit.",
        415: "The body's Content-Type is not one this endpoint accepts.",
        422: "The request is invalid; `detail` names each field. Also: an Idempotency-Key "
        "reused with a different request.",
        429: "Over the tenant's or the key's rate limit; retry after `Retry-After` seconds.",
        503: "Kafka did not acknowledge in time, or a dependency is unreachable. "
        "Retrying with the same Idempotency-Key is safe.",
    }
    out: dict[int | str, dict[str, Any]] = {}
    wanted = set(codes)
    if AUTHENTICATED in wanted:
        wanted = (wanted - {AUTHENTICATED}) | {401, 429}
    for code in sorted(wanted):
        entry: dict[str, Any] = {"model": ErrorBody, "description": descriptions[code]}
        if code == 429:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
            }
        out[code] = entry
    return out
