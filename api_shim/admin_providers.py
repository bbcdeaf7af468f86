"""Provider configurations: a tenant's connectors on `config.providers`, secrets write-only.

Secrets are sealed exactly as `python -m streams.config put providers` seals them (AES-GCM,
PROVIDER_SECRETS_KEY, bound to `tenant:provider_id`): plaintext never reaches Kafka and is
never answered. The configuration is checked against the connector's own model, the one
the deliver stage builds it with, so a configuration that would fail there is a 422 here.
Then every host it makes us connect to (`Connector.targets`: URL settings such as
`base_url` or FCM's `token_uri`, SMTP's `host`, each Apprise URL's service host) must be
public, or the PUT is a 422 naming the setting (SSRF; the connectors check again at send).
"""

from __future__ import annotations

import json
import typing
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, SecretStr, ValidationError

from api_shim import errors
from api_shim.admin_common import (
    FieldProblem,
    ProviderIdPath,
    as_datetime,
    now_ms,
    tombstone,
    view,
    write,
)
from api_shim.admin_models import ProviderIn, ProviderOut
from api_shim.auth import Admin, Principal
from api_shim.errors import AUTHENTICATED, NotFound, Unavailable
from connectors.base import Connector, ProviderConfig
from connectors.egress import Egress, Target, TargetRefused, check_targets
from connectors.errors import ConnectorError, DeliveryError, RetryableDeliveryError
from connectors.registry import PROVIDERS
from connectors.setting_text import settings_from_text
from core.rate_limits import parse_rate
from core.sealing import SealingError, SecretBox
from streams.config.apply import provider_box
from streams.config.kinds import ConfigError
from streams.delivery.providers import PIPELINE_SETTINGS

router = APIRouter(tags=["admin"])

TOPIC = "config.providers"
# Connector fields only the operator may set (the deliver stage overrides them anyway).
OPERATOR_FIELDS = frozenset({"allow_private_targets"})


def _where(setting: str, secrets: dict[str, str]) -> str:
    return f"{'secrets' if setting.split('.', 1)[0] in secrets else 'settings'}.{setting}"


def shim_egress(request: Request) -> Egress:
    """The shim's SSRF rule: the workers' (private targets only if the operator allows)."""
    return Egress(allow_private=request.app.state.settings.webhook_allow_private_targets)


async def check_targets_of(
    egress: Egress,
    cls: type[Connector[Any]],
    config: ProviderConfig,
    settings: dict[str, str],
    secrets: dict[str, str],
) -> None:
    """422 naming the first setting that aims us at a host that is not public (SSRF).

    Only what the tenant gave: a connector's defaults are the provider's public endpoints
    (and a setting without a safe default, such as SMTP's host, is required by its model).
    """
    # Never the value in a problem: it may be a secret (a webhook URL with a token in it).
    problem = "is not an allowed target: only public hosts (and http(s) URLs)"
    try:
        targets: list[Target] = cls.targets(config)
    except TargetRefused as exc:  # a URL setting that is not http(s), a host-less URL
        raise FieldProblem(_where(exc.setting or "urls", secrets), problem) from exc
    except ConnectorError as exc:  # an Apprise URL Apprise cannot parse
        raise FieldProblem(_where("urls", secrets), "is not a valid Apprise URL") from exc
    for target in targets:
        if target.setting.split(".", 1)[0] not in settings.keys() | secrets.keys():
            continue
        try:
            await check_targets([target], egress)
        except RetryableDeliveryError as exc:
            where = _where(target.setting, secrets)
            raise FieldProblem(where, "names a host that does not resolve") from exc
        except DeliveryError as exc:
            raise FieldProblem(_where(target.setting, secrets), problem) from exc


def _box(request: Request) -> SecretBox | None:
    try:
        return provider_box(request.app.state.settings)
    except ConfigError as exc:
        raise Unavailable("the shim's PROVIDER_SECRETS_KEY is malformed") from exc


def _require_box(request: Request) -> SecretBox:
    box = _box(request)
    if box is None:
        raise Unavailable(
            "provider secrets cannot be stored: this shim has no PROVIDER_SECRETS_KEY to seal "
            "them with (they are never stored in plaintext)"
        )
    return box


def _as_text(value: Any) -> str:
    """Settings and secrets travel as strings; lists and objects as JSON
    (streams.delivery.providers)."""
    return value if isinstance(value, str) else json.dumps(value)


def _mentions_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_mentions_secret(arg) for arg in typing.get_args(annotation))


def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(n for n, f in model.model_fields.items() if _mentions_secret(f.annotation))


def _check(
    body: ProviderIn, settings: dict[str, str], secrets: dict[str, str]
) -> tuple[type[Connector[Any]], ProviderConfig]:
    """422 naming the first field the connector's model refuses (never echoing a secret);
    the connector class and the configuration it would be built with."""
    cls = PROVIDERS.get(body.provider)
    if cls is None:
        raise FieldProblem(
            "provider", f"unknown provider {body.provider!r}; valid: {', '.join(sorted(PROVIDERS))}"
        )
    if cls.channel != body.channel.value:
        raise FieldProblem("channel", f"{body.provider} delivers on {cls.channel!r}")
    for where, names in (("settings", settings), ("secrets", secrets)):
        for name in sorted(OPERATOR_FIELDS & set(names)):
            raise FieldProblem(f"{where}.{name}", "is set by the platform operator")
    for name in sorted(secret_fields(cls.config_model) & set(settings)):
        raise FieldProblem(f"settings.{name}", "is a secret: give it in `secrets` (write-only)")
    model = cls.config_model
    values = settings_from_text(
        model, {k: v for k, v in settings.items() if k not in PIPELINE_SETTINGS}
    )
    for name in PIPELINE_SETTINGS & set(settings):
        try:
            parse_rate(settings[name])
        except ValueError as exc:
            raise FieldProblem(f"settings.{name}", str(exc)) from None
    try:
        config = model.model_validate({**values, **settings_from_text(model, secrets)})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        if name in secrets or (name not in settings and name in secret_fields(cls.config_model)):
            # A validator's message may quote the value: for a secret, say only what is wrong.
            raise FieldProblem(f"secrets.{name}", _secret_problem(error["type"])) from None
        field = ".".join(str(p) for p in error["loc"])
        raise FieldProblem(f"settings.{field}", str(error["msg"])) from None
    return cls, config


def _secret_problem(error_type: str) -> str:
    return "Field required" if error_type == "missing" else f"invalid ({error_type})"


def _secret_names(box: SecretBox | None, record: dict[str, Any]) -> list[str] | None:
    sealed = record.get("secrets_sealed")
    if not sealed:
        return []
    if box is None:
        return None
    try:
        opened = box.open(sealed, tenant_id=record["tenant_id"], provider_id=record["provider_id"])
    except SealingError:
        return None
    return sorted(opened)


def provider_out(record: dict[str, Any], box: SecretBox | None) -> ProviderOut:
    return ProviderOut(
        provider_id=record["provider_id"],
        channel=record["channel"],
        provider=record["provider"],
        enabled=record["enabled"],
        priority=record["priority"],
        settings=dict(record["settings"]),
        secret_names=_secret_names(box, record),
        secrets_set=bool(record.get("secrets_sealed")),
        updated_at=as_datetime(record.get("updated_at") or None),
    )


def _own(request: Request, caller: Principal, provider_id: str) -> dict[str, Any]:
    record = view(request, TOPIC).get(f"{caller.tenant_id}:{provider_id}")
    if record is None:
        raise NotFound(f"no provider configuration {provider_id!r}")
    return record


@router.put(
    "/api/v1/admin/providers/{provider_id}",
    response_model=ProviderOut,
    status_code=200,
    responses={
        201: {"model": ProviderOut, "description": "Created."},
        **errors.responses(AUTHENTICATED, 403, 422, 503),
    },
    summary="Create or replace a provider configuration",
    description="Checked against the connector's configuration model (422 naming the field, "
    "never echoing a secret). `secrets` are sealed before they are written and never "
    "answered; left out, the stored ones are kept. Without PROVIDER_SECRETS_KEY the shim "
    "refuses secrets with 503 rather than store them in plaintext. 201 when created.",
)
async def put_provider(
    provider_id: ProviderIdPath,
    body: ProviderIn,
    request: Request,
    response: Response,
    caller: Admin,
) -> ProviderOut:
    key = f"{caller.tenant_id}:{provider_id}"
    existing = view(request, TOPIC).get(key)
    settings = {k: _as_text(v) for k, v in body.settings.items()}
    sealed: bytes | None = None
    if body.secrets is not None:
        secrets = {k: _as_text(v) for k, v in body.secrets.items()}
        await check_targets_of(
            shim_egress(request), *_check(body, settings, secrets), settings, secrets
        )
        if secrets:
            sealed = _require_box(request).seal(
                secrets, tenant_id=caller.tenant_id, provider_id=provider_id
            )
    elif existing is not None and existing.get("secrets_sealed"):
        box = _require_box(request)
        sealed = existing["secrets_sealed"]
        try:
            kept = box.open(sealed, tenant_id=caller.tenant_id, provider_id=provider_id)
        except SealingError as exc:
            raise Unavailable(f"the stored secrets do not open ({exc}); give them again") from exc
        await check_targets_of(shim_egress(request), *_check(body, settings, kept), settings, kept)
        # Re-sealed under the current key: after a key rotation (PROVIDER_SECRETS_KEY_ID with
        # the old key in PROVIDER_SECRETS_OLD_KEYS) any PUT moves a record onto the new key.
        sealed = box.seal(kept, tenant_id=caller.tenant_id, provider_id=provider_id)
    else:
        await check_targets_of(shim_egress(request), *_check(body, settings, {}), settings, {})
    record = {
        "tenant_id": caller.tenant_id,
        "provider_id": provider_id,
        "channel": body.channel.value,
        "provider": body.provider,
        "enabled": body.enabled,
        "priority": body.priority,
        "settings": settings,
        "secrets_sealed": sealed,
        "updated_at": now_ms(),
    }
    await write(request, TOPIC, "ProviderConfig", key, record)
    if existing is None:
        response.status_code = 201
    return provider_out(record, _box(request))


@router.get(
    "/api/v1/admin/providers",
    response_model=list[ProviderOut],
    responses=errors.responses(AUTHENTICATED, 403, 503),
    summary="Your tenant's provider configurations (secret names only)",
)
async def list_providers(request: Request, caller: Admin) -> list[ProviderOut]:
    box = _box(request)
    found = view(request, TOPIC).items_with_prefix(f"{caller.tenant_id}:")
    return [provider_out(record, box) for _, record in sorted(found)]


@router.get(
    "/api/v1/admin/providers/{provider_id}",
    response_model=ProviderOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422, 503),
    summary="One provider configuration (secret names only)",
)
async def get_provider(provider_id: ProviderIdPath, request: Request, caller: Admin) -> ProviderOut:
    return provider_out(_own(request, caller, provider_id), _box(request))


@router.delete(
    "/api/v1/admin/providers/{provider_id}",
    status_code=204,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422, 503),
    summary="Delete a provider configuration",
    description="Writes a tombstone: workers drop the configuration (and its secrets) and "
    "stop using it. To pause one and keep it, PUT it with `enabled: false`.",
)
async def delete_provider(provider_id: ProviderIdPath, request: Request, caller: Admin) -> Response:
    _own(request, caller, provider_id)
    await tombstone(request, TOPIC, f"{caller.tenant_id}:{provider_id}")
    return Response(status_code=204)
