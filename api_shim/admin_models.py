"""The admin API's HTTP models (docs/api.md, "Admin endpoints").

They describe the HTTP contract; the records written are shaped by the Avro schemas (Tenant,
ApiKey, Template, ProviderConfig, TriggerRule) and validated again by the codec.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
)

from api_shim.admin_common import ID_PATTERN
from api_shim.auth import Scope
from api_shim.models import Channel, WholeNumber, given
from connectors.registry import PROVIDERS
from streams.triggers.rules import Rule, TenantSpec

Ident = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Locale = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$", max_length=35)
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
MAX_SETTINGS = 64
MAX_SOURCE_BYTES = 256 * 1024


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- tenants -----------------------------------------------------------------------------------


class _TenantSettings(_In):
    name: Name | None = None
    default_locale: Locale = "en"
    timezone: str = Field(default="UTC", max_length=64, examples=["Europe/Berlin"])
    settings: dict[str, str] = Field(default_factory=dict, max_length=MAX_SETTINGS)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, timezone: str) -> str:
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {timezone!r}") from None
        return timezone


class TenantUpdate(_TenantSettings):
    """A tenant's own settings; replaces name, default_locale, timezone and the settings the
    tenant manages."""

    enabled: StrictBool | None = Field(
        default=None,
        description="Set by the platform operator only: giving it here answers 403.",
    )


class TenantCreate(_TenantSettings):
    tenant_id: Ident
    enabled: StrictBool = True


class TenantPatch(_In):
    """The operator's changes: `enabled`, and settings merged in (a null value removes one)."""

    enabled: StrictBool | None = None
    settings: dict[str, str | None] = Field(default_factory=dict, max_length=MAX_SETTINGS)


class TenantOut(BaseModel):
    tenant_id: str
    name: str | None
    enabled: bool
    default_locale: str
    timezone: str
    settings: dict[str, str]
    updated_at: datetime | None


# -- API keys ----------------------------------------------------------------------------------


class ApiKeyCreate(_In):
    name: Name
    scopes: list[Scope] = Field(min_length=1, examples=[["send", "read"]])

    @field_validator("scopes")
    @classmethod
    def _unique(cls, scopes: list[Scope]) -> list[Scope]:
        return list(dict.fromkeys(scopes))


class ApiKeyOut(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str | None = Field(
        description="The full key, `nk_<key_id>_<secret>`: shown in this answer only. A "
        "replayed answer (Idempotent-Replayed: true) has null: the secret is never stored."
    )


class TenantCreated(BaseModel):
    tenant: TenantOut
    api_key: ApiKeyCreated = Field(description="The tenant's first key, scopes send/read/admin.")


# -- templates ---------------------------------------------------------------------------------


class ContentIn(_In):
    """Jinja2 sources (sandboxed); at least text or html."""

    model_config = ConfigDict(
        json_schema_extra={"anyOf": [given(f, {"type": "string"}) for f in ("text", "html")]}
    )

    subject: str | None = None
    text: str | None = None
    html: str | None = Field(default=None, validate_default=True)

    @field_validator("html")
    @classmethod
    def _text_or_html(cls, html: str | None, info: Any) -> str | None:
        if info.data.get("text") is None and html is None:
            raise ValueError("content needs text or html")
        parts = [info.data.get("subject"), info.data.get("text"), html]
        size = sum(len(p.encode()) for p in parts if p)
        if size > MAX_SOURCE_BYTES:
            raise ValueError(f"content is {size} bytes; at most {MAX_SOURCE_BYTES} are allowed")
        return html


class VariantIn(_In):
    locale: Locale | None = None
    channel: Channel | None = None
    content: ContentIn


class DigestRuleIn(_In):
    key: str = ""
    mode: Literal["fixed", "inactivity"] = "fixed"
    window_seconds: WholeNumber = Field(default=3600, gt=0)
    max_window_seconds: WholeNumber = Field(default=86400, gt=0)
    max_items: WholeNumber = Field(default=0, ge=0)
    template_id: Ident


class TemplateVersionIn(_In):
    """One version of a template (docs/templates.md)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "content": {"subject": "Welcome, {{ name }}", "text": "Hi {{ name }}!"},
                    "variables": ["name"],
                    "variants": [{"locale": "de", "content": {"text": "Hallo {{ name }}!"}}],
                }
            ]
        },
    )

    name: Name | None = None
    category: Literal["transactional", "marketing", "system", "alert"] = "transactional"
    state: Literal["draft", "published"] = Field(
        default="draft", description="A new version is a draft unless published at once."
    )
    default_locale: Locale = "en"
    content: ContentIn
    variants: list[VariantIn] = Field(default_factory=list, max_length=100)
    variables: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=200
    )
    critical_overrides_preferences: StrictBool = False
    digest: DigestRuleIn | None = None


class TemplateOut(BaseModel):
    template_id: str
    version: int
    state: str
    name: str | None
    category: str
    default_locale: str
    content: dict[str, str | None]
    variants: list[dict[str, Any]]
    variables: list[str]
    critical_overrides_preferences: bool
    digest: dict[str, Any] | None
    updated_at: datetime | None


class TemplateSummary(BaseModel):
    template_id: str
    name: str | None
    active_version: int | None = Field(
        description="The version requests get: the highest published one."
    )
    versions: list[int]


class TemplateDetail(BaseModel):
    template_id: str
    active_version: int | None
    versions: list[TemplateOut]


class PreviewIn(_In):
    """Render a stored version (default: the active one) or a draft `template` not yet saved."""

    version: WholeNumber | None = Field(default=None, ge=1)
    template: TemplateVersionIn | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="The request's data.")
    channel: Channel = Channel.email
    locale: Locale | None = None


class PreviewOut(BaseModel):
    subject: str | None
    text: str | None
    html: str | None
    locale_used: str | None
    version: int | None = Field(description="The version rendered; null for a draft body.")


# -- providers ---------------------------------------------------------------------------------


class ProviderIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,  # `secrets` must never be echoed in a 422
        json_schema_extra={
            "examples": [
                {
                    "channel": "email",
                    "provider": "sendgrid",
                    "priority": 0,
                    "settings": {"sender": "Acme <notify@acme.example>"},
                    "secrets": {"api_key": "SG.xxxx"},
                }
            ]
        },
    )

    channel: Channel
    provider: str = Field(
        max_length=64,
        description="A name from the connector registry, delivering on `channel`.",
        json_schema_extra={"enum": [*sorted(PROVIDERS)]},
    )
    enabled: StrictBool = True
    priority: WholeNumber = Field(default=0, ge=-1000, le=1000, description="Lower is tried first.")
    settings: dict[str, Any] = Field(
        default_factory=dict, max_length=MAX_SETTINGS, description="Non-secret settings."
    )
    secrets: dict[str, Any] | None = Field(
        default=None,
        max_length=MAX_SETTINGS,
        description="Write-only: sealed (AES-GCM) before they reach Kafka, never returned. "
        "Left out: the stored secrets are kept; `{}` removes them.",
    )


class ProviderOut(BaseModel):
    provider_id: str
    channel: str
    provider: str
    enabled: bool
    priority: int
    settings: dict[str, str]
    secret_names: list[str] | None = Field(
        description="Names of the secrets set (never their values); null when the shim "
        "cannot open them (no PROVIDER_SECRETS_KEY)."
    )
    secrets_set: bool
    updated_at: datetime | None


# -- trigger rules -----------------------------------------------------------------------------


class TriggerRuleIn(Rule):
    """One rule of the rules file (docs/triggers.md): `name` is the rule id from the path;
    `tenant` is best left out: the topic's tenant field (set by the operator) is used, and
    any other path or a fixed value is refused."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "topic": "orders.events",
                    "when": {"type": "order.created"},
                    "template_id": "order-confirmation",
                    "channels": ["email"],
                    "recipient": {"user_id": "customer.id", "email": "customer.email"},
                    "data": {"order_id": "id", "total": "total"},
                    "idempotency_key": "event_id",
                }
            ]
        },
    )

    name: str | None = None  # type: ignore[assignment]
    tenant: TenantSpec | None = None  # type: ignore[assignment]
    enabled: StrictBool = True


class TriggerRuleOut(BaseModel):
    rule_id: str
    enabled: bool
    rule: Rule
    updated_at: datetime | None
