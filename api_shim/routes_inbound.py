"""Inbound provider webhooks: delivery receipts from providers -> notifications.receipts.

    POST /api/v1/inbound/{tenant_id}/{provider_id}    a provider's webhook (docs/api.md)
    GET  /api/v1/inbound/{tenant_id}/{provider_id}    Meta's verification handshake

No API key: the provider's signature is the authentication, checked with the tenant's own
provider configuration (config.providers, secrets opened with PROVIDER_SECRETS_KEY as the
workers do). The route is the same for every provider: find the configuration -> verify ->
parse -> one ProviderReceipt per receipt, keyed by notification id, each scoped to the tenant
in the path. The receipts stage (streams/receipts.py) checks that the notification is that
tenant's and applies each provider event once, so a redelivered webhook is harmless; that is
also why there is no Idempotency-Key here.

A path without a usable configuration (no such tenant or configuration, another tenant's,
a provider that sends no receipts here) is one and the same 404, so the endpoint cannot be
used to find out which tenants exist and which providers they use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import State

from api_shim import errors, inbound_tokens
from api_shim.errors import ApiError, Forbidden, Unavailable
from api_shim.inbound_providers import (
    ADAPTERS,
    NO_ENDPOINT,
    NOT_VERIFIED,
    InboundProvider,
    InboundRequest,
    no_endpoint,
)
from api_shim.models import ErrorBody
from api_shim.publish import publish
from connectors import mailgun, registry
from connectors.receipts import Receipt, receipt_record
from connectors.setting_text import settings_from_text
from core.sealing import SealingError, SecretBox
from core.settings import Settings
from streams.delivery.providers import GLOBAL_TENANT, PIPELINE_SETTINGS

log = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Follows shim.inbound-tokens (api_shim.inbound_tokens); stopped with the app's views."""
    state = app.state
    topic = inbound_tokens.TOPIC
    view = inbound_tokens.claim_view(state.settings, state.topics.name(topic), state.codec)
    view.start()
    state.views[topic] = view
    await run_in_threadpool(view.wait_caught_up, state.settings.shim_view_catchup_seconds)
    yield


router = APIRouter(tags=["inbound webhooks"], lifespan=_lifespan)

PATH = "/api/v1/inbound/{tenant_id}/{provider_id}"
TOPIC = "notifications.receipts"

TenantId = Annotated[str, Path(min_length=1, max_length=200, description="The tenant's id.")]
ProviderId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        description="The tenant's provider configuration (its `provider_id`).",
    ),
]


class UnsupportedMediaType(ApiError):
    status_code = 415
    error = "unsupported_media_type"


class InboundAccepted(BaseModel):
    receipts: int = Field(description="ProviderReceipt records written to notifications.receipts.")
    skipped: int = Field(
        description="Receipts not written: naming no notification, or another tenant."
    )


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    out = errors.responses(*codes)
    out[415] = {"model": ErrorBody, "description": "A content type this provider does not send."}
    out[401] = {
        "model": ErrorBody,
        "description": "The provider's signature is missing or does not verify.",
    }
    out[404] = {
        "model": ErrorBody,
        "description": f"{NO_ENDPOINT} (the same answer whatever is missing).",
    }
    out[403] = {
        "model": ErrorBody,
        "description": "The configuration cannot verify webhooks: its verification key is "
        "not set, or it is invalid.",
    }
    out[503] = {
        "model": ErrorBody,
        "description": "Kafka did not acknowledge every receipt (the provider retries; what was "
        "written is deduplicated), an SNS certificate could not be fetched, or the "
        "configuration's secrets cannot be opened by this service.",
    }
    return out


def _box(settings: Settings) -> SecretBox | None:
    # The same keys, and the same construction, as the deliver stage (streams/stages/deliver.py).
    key = settings.provider_secrets_key
    old = {
        kid: value.get_secret_value() for kid, value in settings.provider_secrets_old_keys.items()
    }
    return SecretBox.from_settings(
        key.get_secret_value() if key else None, settings.provider_secrets_key_id, old
    )


def _config(settings: Settings, record: dict[str, Any]) -> Any:
    """The connector's configuration model from a ProviderConfig record, as the workers build
    it (streams.delivery.providers.ProviderPool): settings, then opened secrets over them."""
    pid = f"{record['tenant_id']}:{record['provider_id']}"
    model = registry.provider_class(record["provider"]).config_model
    values = {k: v for k, v in (record.get("settings") or {}).items() if k not in PIPELINE_SETTINGS}
    sealed = record.get("secrets_sealed")
    if sealed:
        try:
            box = _box(settings)
            if box is None:
                raise SealingError("sealed secrets, but PROVIDER_SECRETS_KEY is not set")
            secrets = box.open(
                sealed, tenant_id=record["tenant_id"], provider_id=record["provider_id"]
            )
        except SealingError as exc:
            log.error("inbound webhook for %s: %s", pid, exc)
            raise Unavailable(
                f"the secrets of provider configuration {record['provider_id']!r} cannot be "
                "opened by this service; retry later"
            ) from None
        values.update(secrets)
    try:
        return model.model_validate(settings_from_text(model, values))
    except ValidationError as exc:
        # Field names only: values may be secret.
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise Forbidden(
            f"provider configuration {record['provider_id']!r} is invalid ({fields})"
        ) from None


@dataclass(frozen=True)
class Target:
    adapter: InboundProvider
    provider: str  # the registry name
    config: Any  # the connector's configuration model


def _target(request: Request, tenant_id: str, provider_id: str) -> Target:
    """The adapter and configuration for this path; 404 (always the same) / 403 when there is
    none to use. Why there is none is logged, for the operator."""
    views = request.app.state.views
    record = views["config.providers"].get(f"{tenant_id}:{provider_id}")
    if record is None or record["tenant_id"] != tenant_id:
        raise no_endpoint()
    provider = record["provider"]
    adapter = ADAPTERS.get(provider)
    if provider in NOT_VERIFIED or adapter is None:
        why = NOT_VERIFIED.get(provider, f"provider {provider!r} sends no receipts here")
        log.info("inbound webhook for %s:%s refused (404): %s", tenant_id, provider_id, why)
        raise no_endpoint()
    config = _config(request.app.state.settings, record)
    if not adapter.has_key(config):
        raise Forbidden(
            f"provider configuration {provider_id!r} has no {adapter.key_field}: its "
            "webhooks cannot be verified, so they are refused"
        )
    return Target(adapter, provider, config)


def public_url(request: Request, base: str | None) -> str:
    """The URL the provider called: SHIM_PUBLIC_URL + path + query behind a proxy, else the
    request's own URL."""
    if not base:
        return str(request.url)
    query = request.url.query
    return base.rstrip("/") + request.url.path + (f"?{query}" if query else "")


def _scoped(receipt: Receipt, tenant_id: str) -> Receipt | None:
    """The receipt as this tenant's, or None if it cannot be written."""
    if not receipt.notification_id:
        return None
    if tenant_id == GLOBAL_TENANT:
        # A platform-wide configuration reports for every tenant: the receipts stage checks
        # the tenant the provider echoed, if any.
        return receipt
    if receipt.tenant_id not in (None, tenant_id):
        return None
    # Signed with this tenant's secret: the receipts stage refuses it for another tenant's
    # notification.
    return receipt.model_copy(update={"tenant_id": tenant_id})


async def produce_receipts(
    state: State, tenant_id: str, provider_id: str, receipts: list[Receipt]
) -> InboundAccepted:
    records = []
    for receipt in receipts:
        scoped = _scoped(receipt, tenant_id)
        if scoped is None:
            log.warning(
                "inbound webhook %s:%s: skipped %s receipt %s (notification %r, tenant %r)",
                tenant_id,
                provider_id,
                receipt.provider,
                receipt.provider_event_id,
                receipt.notification_id,
                receipt.tenant_id,
            )
            continue
        records.append(receipt_record(scoped))
    # All at once; the answer waits until Kafka acknowledged every one (503 otherwise, and
    # the provider retries: what was written is then deduplicated on its event id).
    await asyncio.gather(
        *(
            publish(state, TOPIC, "ProviderReceipt", record, key=str(record["notification_id"]))
            for record in records
        )
    )
    return InboundAccepted(receipts=len(records), skipped=len(receipts) - len(records))


@router.post(
    PATH,
    response_model=InboundAccepted,
    responses=_responses(400, 401, 403, 404, 413, 415, 422, 503),
    summary="Receive a provider's delivery receipts",
    description="The webhook URL to configure in the provider's console (Twilio "
    "`status_callback`, SendGrid Event Webhook, Mailgun webhooks, Meta WhatsApp callback URL, "
    "an SNS HTTPS subscription for SES, or our own signed recipe for `webhook` configurations). "
    "No API key: the request must carry the provider's valid signature, checked with the "
    "tenant's provider configuration. Each delivery receipt becomes a ProviderReceipt on "
    "`notifications.receipts`; the answer (200) comes once Kafka acknowledged them all. Events "
    "that say nothing about delivery (opens, clicks, progress) are ignored.",
)
async def receive_receipts(
    request: Request, tenant_id: TenantId, provider_id: ProviderId
) -> InboundAccepted:
    target = _target(request, tenant_id, provider_id)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in target.adapter.content_types:
        accepted = ", ".join(sorted(target.adapter.content_types))
        raise UnsupportedMediaType(
            f"content type {media_type or '(none)'!r} is not accepted here; expected {accepted}"
        )
    inbound = InboundRequest(
        tenant_id=tenant_id,
        provider_id=provider_id,
        provider=target.provider,
        config=target.config,
        body=await request.body(),
        headers=request.headers,
        url=public_url(request, request.app.state.settings.shim_public_url),
        query=request.query_params.multi_items(),
        first_use=partial(
            inbound_tokens.first_use,
            request.app.state,
            tenant_id,
            provider_id,
            ttl_seconds=mailgun.WEBHOOK_TOLERANCE_SECONDS,
        ),
    )
    receipts = await target.adapter.receipts(inbound)
    return await produce_receipts(request.app.state, tenant_id, provider_id, receipts)


def _json_errors(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    # Explicit JSON content: the route's own media type (text/plain) would be assumed.
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {
        code: {"description": text, "content": {"application/json": {"schema": schema}}}
        for code, text in descriptions.items()
    }


@router.get(
    PATH,
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "`hub.challenge`, echoed.",
        },
        **_json_errors(
            {
                400: "`hub.challenge` is missing.",
                403: "`hub.mode` is not `subscribe`, `hub.verify_token` does not match, or "
                "the configuration cannot verify webhooks.",
                404: f"{NO_ENDPOINT} (the same answer whatever is missing, also when the "
                "provider has no handshake).",
                503: "The configuration's secrets cannot be opened by this service.",
            }
        ),
    },
    summary="Answer a provider's verification handshake (Meta WhatsApp)",
    description="Meta's callback URL verification: with `hub.mode=subscribe` and the "
    "configuration's `webhook_verify_token` as `hub.verify_token`, answers `hub.challenge`.",
)
async def verify_subscription(
    request: Request, tenant_id: TenantId, provider_id: ProviderId
) -> PlainTextResponse:
    target = _target(request, tenant_id, provider_id)
    challenge = target.adapter.handshake(target.config, dict(request.query_params))
    return PlainTextResponse(challenge)
