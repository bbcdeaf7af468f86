"""Templates: create a version, publish or archive it, list and read them, preview with data.

One record per version on `notifications.templates` (key `tenant:template:version`). Which
version requests get, and how a template renders, are streams.content.templates' decisions: the
preview calls the same function the render stage does, in the same sandbox.
"""

from __future__ import annotations

from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from jinja2.sandbox import ImmutableSandboxedEnvironment

from api_shim import errors
from api_shim.admin_common import (
    FieldProblem,
    TemplateIdPath,
    VersionPath,
    as_datetime,
    now_ms,
    view,
    write,
)
from api_shim.admin_models import (
    PreviewIn,
    PreviewOut,
    TemplateDetail,
    TemplateOut,
    TemplateSummary,
    TemplateVersionIn,
)
from api_shim.auth import Admin, Principal
from api_shim.errors import AUTHENTICATED, Conflict, NotFound
from api_shim.idempotency import IdempotencyKey, idempotent
from api_shim.keyed_locks import KeyedLocks
from streams.content import templates
from streams.content.templates import TemplateIndex

router = APIRouter(tags=["admin"])

TOPIC = "notifications.templates"
_syntax = ImmutableSandboxedEnvironment()
# Version numbers are chosen under this lock: two creations in one process never collide.
_locks = KeyedLocks()


class TemplateProblem(FieldProblem):
    """The template cannot render (syntax, a refused operation, a missing variable)."""

    error = "template_error"


def _index(request: Request, tenant_id: str) -> TemplateIndex:
    """The tenant's templates, indexed as the render stage indexes them."""
    index = TemplateIndex()
    for key, record in view(request, TOPIC).items_with_prefix(f"{tenant_id}:"):
        if record["tenant_id"] == tenant_id:
            index.apply(key, None, record)
    return index


def _active(index: TemplateIndex, tenant_id: str, template_id: str) -> int | None:
    found = index.resolve(tenant_id, template_id)
    return None if found is None else int(found["version"])


def template_out(record: dict[str, Any]) -> TemplateOut:
    return TemplateOut(
        template_id=record["template_id"],
        version=record["version"],
        state=record.get("state", "published"),
        name=record.get("name"),
        category=record.get("category", "transactional"),
        default_locale=record.get("default_locale", "en"),
        content=dict(record["content"]),
        variants=list(record.get("variants") or []),
        variables=list(record.get("variables") or []),
        critical_overrides_preferences=record.get("critical_overrides_preferences", False),
        digest=record.get("digest"),
        updated_at=as_datetime(record.get("updated_at") or None),
    )


def _check_syntax(body: TemplateVersionIn, prefix: str = "") -> None:
    """422 naming the field of the first source that does not compile."""
    contents = [("content", body.content)] + [
        (f"variants.{i}.content", v.content) for i, v in enumerate(body.variants)
    ]
    for where, content in contents:
        for field in ("subject", "text", "html"):
            source = getattr(content, field)
            if source is None:
                continue
            try:
                _syntax.parse(source)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateProblem(
                    f"{prefix}{where}.{field}", f"line {exc.lineno}: {exc.message}"
                ) from None
            except ValueError as exc:  # the lexer's int(): a literal over 4,300 digits
                raise TemplateProblem(f"{prefix}{where}.{field}", str(exc)) from None


def _record(tenant_id: str, template_id: str, version: int | None, body: TemplateVersionIn) -> Any:
    return {
        "tenant_id": tenant_id,
        "template_id": template_id,
        "version": version,
        **body.model_dump(mode="json"),
        "updated_at": now_ms(),
    }


def _version(request: Request, caller: Principal, template_id: str, version: int) -> Any:
    found = _index(request, caller.tenant_id).versions(caller.tenant_id, template_id).get(version)
    if found is None:
        raise NotFound(f"template {template_id!r} has no version {version}")
    return found


@router.post(
    "/api/v1/admin/templates/{template_id}/versions",
    status_code=201,
    response_model=TemplateOut,
    responses=errors.responses(AUTHENTICATED, 403, 422, 503),
    summary="Create a template version",
    description="The next version number (the template is created with version 1). A draft "
    "unless `state` is `published`; drafts are reached only by pinning (`template_version`). "
    "Sources are checked for syntax (422 naming the field).",
)
async def create_version(
    template_id: TemplateIdPath,
    body: TemplateVersionIn,
    request: Request,
    caller: Admin,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    _check_syntax(body)

    async def handler() -> tuple[int, TemplateOut]:
        async with _locks.hold((caller.tenant_id, template_id)):
            known = _index(request, caller.tenant_id).versions(caller.tenant_id, template_id)
            version = max(known, default=0) + 1
            record = _record(caller.tenant_id, template_id, version, body)
            key = f"{caller.tenant_id}:{template_id}:{version}"
            return 201, template_out(await write(request, TOPIC, "Template", key, record))

    return await idempotent(request, caller, idempotency_key, handler)


async def _set_state(
    request: Request, caller: Principal, template_id: str, version: int, state: str
) -> TemplateOut:
    record = _version(request, caller, template_id, version)
    if record.get("state") == state:
        return template_out(record)
    updated = {**record, "state": state, "updated_at": now_ms()}
    key = f"{caller.tenant_id}:{template_id}:{version}"
    return template_out(await write(request, TOPIC, "Template", key, updated))


@router.post(
    "/api/v1/admin/templates/{template_id}/versions/{version}/publish",
    response_model=TemplateOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 409, 422, 503),
    summary="Publish a version",
    description="Requests get the highest published version, so publishing a version below "
    "a published one would change nothing: that answers 409 (archive the newer one first).",
)
async def publish_version(
    template_id: TemplateIdPath,
    version: VersionPath,
    request: Request,
    caller: Admin,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    async def handler() -> tuple[int, TemplateOut]:
        index = _index(request, caller.tenant_id)
        active = _active(index, caller.tenant_id, template_id)
        if active is not None and active > version:
            raise Conflict(
                f"version {active} is published and newer: archive it to make version "
                f"{version} the one requests get"
            )
        return 200, await _set_state(request, caller, template_id, version, "published")

    return await idempotent(request, caller, idempotency_key, handler)


@router.post(
    "/api/v1/admin/templates/{template_id}/versions/{version}/archive",
    response_model=TemplateOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422, 503),
    summary="Archive a version",
    description="An archived version is never used, even pinned; requests fall back to the "
    "highest remaining published version (a rollback).",
)
async def archive_version(
    template_id: TemplateIdPath,
    version: VersionPath,
    request: Request,
    caller: Admin,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    async def handler() -> tuple[int, TemplateOut]:
        return 200, await _set_state(request, caller, template_id, version, "archived")

    return await idempotent(request, caller, idempotency_key, handler)


@router.get(
    "/api/v1/admin/templates",
    response_model=list[TemplateSummary],
    responses=errors.responses(AUTHENTICATED, 403),
    summary="Your tenant's templates",
)
async def list_templates(request: Request, caller: Admin) -> list[TemplateSummary]:
    tenant = caller.tenant_id
    index = _index(request, tenant)
    ids = sorted(
        {r["template_id"] for _, r in view(request, TOPIC).items_with_prefix(f"{tenant}:")}
    )
    out = []
    for template_id in ids:
        versions = index.versions(tenant, template_id)
        if not versions:
            continue
        latest = versions[max(versions)]
        out.append(
            TemplateSummary(
                template_id=template_id,
                name=latest.get("name"),
                active_version=_active(index, tenant, template_id),
                versions=sorted(versions),
            )
        )
    return out


@router.get(
    "/api/v1/admin/templates/{template_id}",
    response_model=TemplateDetail,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422),
    summary="A template: every version and the active one",
)
async def get_template(
    template_id: TemplateIdPath, request: Request, caller: Admin
) -> TemplateDetail:
    index = _index(request, caller.tenant_id)
    versions = index.versions(caller.tenant_id, template_id)
    if not versions:
        raise NotFound(f"no template {template_id!r}")
    return TemplateDetail(
        template_id=template_id,
        active_version=_active(index, caller.tenant_id, template_id),
        versions=[template_out(versions[v]) for v in sorted(versions)],
    )


@router.get(
    "/api/v1/admin/templates/{template_id}/versions/{version}",
    response_model=TemplateOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422),
    summary="One version of a template",
)
async def get_version(
    template_id: TemplateIdPath, version: VersionPath, request: Request, caller: Admin
) -> TemplateOut:
    return template_out(_version(request, caller, template_id, version))


@router.post(
    "/api/v1/admin/templates/{template_id}/preview",
    response_model=PreviewOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422),
    summary="Render a version, or a draft body, with sample data",
    description="Renders exactly as the render stage does (locale fallback, channel variants, "
    "declared variables, the Jinja2 sandbox) and sends nothing. `template` renders a body not "
    "yet saved; otherwise `version`, default the active one. A template that cannot render "
    "answers 422 `template_error` naming the problem (a missing variable: field `data`), "
    "also one over the template limits (output size, operand sizes, time budget).",
)
async def preview_template(
    template_id: TemplateIdPath,
    body: PreviewIn,
    request: Request,
    caller: Admin,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    async def handler() -> tuple[int, PreviewOut]:
        return 200, await _preview(request, caller, template_id, body)

    return await idempotent(request, caller, idempotency_key, handler)


async def _preview(
    request: Request, caller: Principal, template_id: str, body: PreviewIn
) -> PreviewOut:
    tenant = caller.tenant_id
    if body.template is not None:
        _check_syntax(body.template, prefix="template.")
        record = _record(tenant, template_id, None, body.template)
    elif body.version is not None:
        record = _version(request, caller, template_id, body.version)
    else:
        record = _index(request, tenant).resolve(tenant, template_id)
        if record is None:
            raise NotFound(f"template {template_id!r} has no published version")
    tenant_record = view(request, "config.tenants").get(tenant)
    result = await run_in_threadpool(
        templates.preview,
        record,
        body.data,
        locale=body.locale,
        channel=body.channel.value,
        tenant_default_locale=tenant_record["default_locale"] if tenant_record else None,
    )
    if result.missing_variables:
        raise TemplateProblem("data", result.error or "missing template variables")
    if result.error is not None:
        raise TemplateProblem("template", result.error)
    return PreviewOut(
        subject=result.subject,
        text=result.text,
        html=result.html,
        locale_used=result.locale_used,
        version=result.version,
    )
