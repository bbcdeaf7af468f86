"""Tenants (the operator creates them; a tenant's admin edits its settings) and API keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api_shim import errors
from api_shim.admin_common import (
    FieldProblem,
    KeyIdPath,
    TenantIdPath,
    as_datetime,
    now_ms,
    shown_once,
    view,
    write,
)
from api_shim.admin_models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    TenantCreate,
    TenantCreated,
    TenantOut,
    TenantPatch,
    TenantUpdate,
)
from api_shim.auth import SCOPES, Admin, Operator, Principal, new_api_key
from api_shim.errors import AUTHENTICATED, Conflict, Forbidden, NotFound
from api_shim.idempotency import IdempotencyKey
from core.rate_limits import parse_rate

router = APIRouter()

TENANTS = "config.tenants"
KEYS = "config.api-keys"
# Tenant settings the pipeline reads as quotas (streams/stages/deliver.py): the operator's to set.
OPERATOR_SETTINGS = frozenset({"rate_limit_per_second"})
# Whom the operator's Idempotency-Keys belong to ('*' is in no tenant id: no collision).
OPERATOR = Principal(tenant_id="*operator", kind="api_key", subject="operator", scopes=frozenset())
# 403: SHIM_OPERATOR_TOKEN is not set; 429: too many wrong operator tokens from one address.
OPERATOR_ERRORS = {
    **errors.responses(401, 403, 429),
    429: {
        **errors.responses(429)[429],
        "description": "Too many wrong operator tokens from this address; retry after "
        "`Retry-After` seconds.",
    },
}


def tenant_out(record: dict[str, Any]) -> TenantOut:
    return TenantOut(
        tenant_id=record["tenant_id"],
        name=record.get("name"),
        enabled=record.get("enabled", True),
        default_locale=record.get("default_locale", "en"),
        timezone=record.get("timezone", "UTC"),
        settings=dict(record.get("settings") or {}),
        updated_at=as_datetime(record.get("updated_at") or None),
    )


def _default_tenant(tenant_id: str) -> dict[str, Any]:
    """What the pipeline applies to a tenant without a record (the Tenant schema's defaults)."""
    return {
        "tenant_id": tenant_id,
        "name": None,
        "enabled": True,
        "default_locale": "en",
        "timezone": "UTC",
        "default_preferences": None,
        "digest_rules": {},
        "settings": {},
        "updated_at": 0,
    }


def key_out(record: dict[str, Any]) -> ApiKeyOut:
    created_at = as_datetime(record["created_at"])
    assert created_at is not None
    return ApiKeyOut(
        key_id=record["key_id"],
        name=record["name"],
        scopes=list(record["scopes"]),
        created_at=created_at,
        revoked_at=as_datetime(record["revoked_at"]),
    )


async def create_key(
    request: Request, tenant_id: str, name: str, scopes: list[str]
) -> ApiKeyCreated:
    key_id, key, digest = new_api_key()
    record = {
        "key_id": key_id,
        "tenant_id": tenant_id,
        "name": name,
        "scopes": scopes,
        "secret_sha256": digest,
        "created_at": now_ms(),
        "revoked_at": None,
    }
    await write(request, KEYS, "ApiKey", key_id, record)
    return ApiKeyCreated(**key_out(record).model_dump(), key=key)


def _without_key(body: Any) -> Any:
    if isinstance(body, TenantCreated):
        return body.model_copy(update={"api_key": _without_key(body.api_key)})
    assert isinstance(body, ApiKeyCreated)
    return body.model_copy(update={"key": None})


# -- the platform operator ---------------------------------------------------------------------


@router.post(
    "/api/v1/platform/tenants",
    status_code=201,
    response_model=TenantCreated,
    responses={**OPERATOR_ERRORS, **errors.responses(409, 422, 503)},
    tags=["platform"],
    summary="Create a tenant and its first API key",
    description="Writes a Tenant record to `config.tenants` and an API key with the scopes "
    "send, read and admin to `config.api-keys`; the key is in this answer only. 409 if the "
    "tenant exists.",
)
async def create_tenant(
    body: TenantCreate,
    request: Request,
    _operator: Operator,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    async def handler() -> tuple[int, TenantCreated]:
        if view(request, TENANTS).get(body.tenant_id) is not None:
            raise Conflict(f"tenant {body.tenant_id!r} exists")
        # The key first: if the tenant write then fails, the retry makes a new key, and the
        # orphan's secret was never shown to anyone.
        api_key = await create_key(request, body.tenant_id, "initial admin key", list(SCOPES))
        record = {
            **_default_tenant(body.tenant_id),
            **body.model_dump(),
            "updated_at": now_ms(),
        }
        await write(request, TENANTS, "Tenant", body.tenant_id, record)
        return 201, TenantCreated(tenant=tenant_out(record), api_key=api_key)

    return await shown_once(request, OPERATOR, idempotency_key, handler, _without_key)


@router.post(
    "/api/v1/platform/tenants/{tenant_id}/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    responses={**OPERATOR_ERRORS, **errors.responses(404, 422, 503)},
    tags=["platform"],
    summary="Issue an API key for an existing tenant",
    description="For a tenant that has lost its admin key: an API key with the scopes "
    "given, shown in this answer only. 404 if the tenant does not exist.",
)
async def issue_tenant_key(
    tenant_id: TenantIdPath,
    body: ApiKeyCreate,
    request: Request,
    _operator: Operator,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    async def handler() -> tuple[int, ApiKeyCreated]:
        if view(request, TENANTS).get(tenant_id) is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        return 201, await create_key(request, tenant_id, body.name, list(body.scopes))

    return await shown_once(request, OPERATOR, idempotency_key, handler, _without_key)


@router.get(
    "/api/v1/platform/tenants",
    response_model=list[TenantOut],
    responses=OPERATOR_ERRORS,
    tags=["platform"],
    summary="Every tenant with a settings record",
)
async def list_tenants(request: Request, _operator: Operator) -> list[TenantOut]:
    records = sorted(view(request, TENANTS).values(), key=lambda r: r["tenant_id"])
    return [tenant_out(r) for r in records]


@router.get(
    "/api/v1/platform/tenants/{tenant_id}",
    response_model=TenantOut,
    responses={**OPERATOR_ERRORS, **errors.responses(404)},
    tags=["platform"],
    summary="One tenant's settings",
)
async def get_tenant(tenant_id: TenantIdPath, request: Request, _operator: Operator) -> TenantOut:
    record = view(request, TENANTS).get(tenant_id)
    if record is None:
        raise NotFound(f"no tenant {tenant_id!r}")
    return tenant_out(record)


@router.patch(
    "/api/v1/platform/tenants/{tenant_id}",
    response_model=TenantOut,
    responses={**OPERATOR_ERRORS, **errors.responses(404, 422, 503)},
    tags=["platform"],
    summary="Enable or disable a tenant; set operator settings",
    description="`enabled: false` makes the pipeline fail the tenant's requests with the "
    "reason. `settings` are merged (a null value removes one); quotas such as "
    "`rate_limit_per_second` can only be set here.",
)
async def patch_tenant(
    body: TenantPatch,
    request: Request,
    _operator: Operator,
    tenant_id: TenantIdPath,
) -> TenantOut:
    record = view(request, TENANTS).get(tenant_id)
    if record is None:
        raise NotFound(f"no tenant {tenant_id!r}")
    settings = dict(record.get("settings") or {})
    for name, value in body.settings.items():
        if value is None:
            settings.pop(name, None)
            continue
        if name == "rate_limit_per_second":
            try:
                parse_rate(value)
            except ValueError as exc:
                raise FieldProblem(f"settings.{name}", str(exc)) from None
        settings[name] = value
    enabled = record["enabled"] if body.enabled is None else body.enabled
    updated = {**record, "enabled": enabled, "settings": settings, "updated_at": now_ms()}
    return tenant_out(await write(request, TENANTS, "Tenant", tenant_id, updated))


# -- a tenant's own settings -------------------------------------------------------------------


@router.get(
    "/api/v1/admin/tenant",
    response_model=TenantOut,
    responses=errors.responses(AUTHENTICATED, 403),
    tags=["admin"],
    summary="Your tenant's settings",
    description="A tenant without a settings record gets the defaults the pipeline applies.",
)
async def get_own_tenant(request: Request, caller: Admin) -> TenantOut:
    record = view(request, TENANTS).get(caller.tenant_id)
    return tenant_out(record or _default_tenant(caller.tenant_id))


@router.put(
    "/api/v1/admin/tenant",
    response_model=TenantOut,
    responses=errors.responses(AUTHENTICATED, 403, 422, 503),
    tags=["admin"],
    summary="Replace your tenant's settings",
    description="Replaces name, default_locale, timezone and `settings`. `enabled` and the "
    "operator's settings (`rate_limit_per_second`) are the platform operator's: giving them "
    "answers 403, and their current values are kept.",
)
async def put_own_tenant(body: TenantUpdate, request: Request, caller: Admin) -> TenantOut:
    if body.enabled is not None:
        raise Forbidden("enabled is set by the platform operator")
    reserved = sorted(OPERATOR_SETTINGS & set(body.settings))
    if reserved:
        raise Forbidden(f"settings.{reserved[0]} is set by the platform operator")
    record = view(request, TENANTS).get(caller.tenant_id) or _default_tenant(caller.tenant_id)
    kept = {k: v for k, v in (record.get("settings") or {}).items() if k in OPERATOR_SETTINGS}
    updated = {
        **record,
        **body.model_dump(exclude={"enabled", "settings"}),
        "settings": {**body.settings, **kept},
        "updated_at": now_ms(),
    }
    return tenant_out(await write(request, TENANTS, "Tenant", caller.tenant_id, updated))


# -- API keys ----------------------------------------------------------------------------------


@router.post(
    "/api/v1/admin/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=errors.responses(AUTHENTICATED, 403, 422, 503),
    tags=["admin"],
    summary="Create an API key",
    description="The key (`nk_<key_id>_<secret>`) is in this answer only: `config.api-keys` "
    "keeps the SHA-256 of the secret. An admin may give any scope.",
)
async def create_api_key(
    body: ApiKeyCreate,
    request: Request,
    caller: Admin,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    async def handler() -> tuple[int, ApiKeyCreated]:
        return 201, await create_key(request, caller.tenant_id, body.name, list(body.scopes))

    return await shown_once(request, caller, idempotency_key, handler, _without_key)


def _own_key(request: Request, caller: Principal, key_id: str) -> dict[str, Any]:
    record = view(request, KEYS).get(key_id)
    if record is None or record["tenant_id"] != caller.tenant_id:
        raise NotFound(f"no API key {key_id!r}")
    return record


@router.get(
    "/api/v1/admin/api-keys",
    response_model=list[ApiKeyOut],
    responses=errors.responses(AUTHENTICATED, 403),
    tags=["admin"],
    summary="Your tenant's API keys (never their secrets), revoked ones included",
)
async def list_api_keys(request: Request, caller: Admin) -> list[ApiKeyOut]:
    records = [r for r in view(request, KEYS).values() if r["tenant_id"] == caller.tenant_id]
    return [key_out(r) for r in sorted(records, key=lambda r: (r["created_at"], r["key_id"]))]


@router.get(
    "/api/v1/admin/api-keys/{key_id}",
    response_model=ApiKeyOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422),
    tags=["admin"],
    summary="One API key (never its secret)",
)
async def get_api_key(request: Request, caller: Admin, key_id: KeyIdPath) -> ApiKeyOut:
    return key_out(_own_key(request, caller, key_id))


@router.delete(
    "/api/v1/admin/api-keys/{key_id}",
    response_model=ApiKeyOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422, 503),
    tags=["admin"],
    summary="Revoke an API key",
    description="Sets `revoked_at`: the key is refused (401) from this answer on by this shim "
    "process, and by the others as soon as they read `config.api-keys`. Revoking a revoked "
    "key changes nothing.",
)
async def revoke_api_key(request: Request, caller: Admin, key_id: KeyIdPath) -> ApiKeyOut:
    record = _own_key(request, caller, key_id)
    if record["revoked_at"] is None:
        record = await write(request, KEYS, "ApiKey", key_id, {**record, "revoked_at": now_ms()})
    return key_out(record)
