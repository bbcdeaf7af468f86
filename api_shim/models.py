"""The shim's HTTP models: what a caller may send and what it gets back.

These describe the HTTP contract only. The event itself (NotificationRequest) is shaped by
schemas/notification_request.avsc and validated by the codec when it is encoded; the enums
here are checked against the .avsc symbols by tests/unit/test_shim_models.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

MAX_RECIPIENTS = 1000
MAX_CONTENT_BYTES = 256 * 1024
MAX_DATA_BYTES = 256 * 1024
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 1024
MAX_ADDRESS_CHARS = 2048  # a webhook URL or a push token; both are far shorter in practice
# How far ahead send_at may be: held notifications live in the scheduler's table until then.
MAX_SCHEDULE_AHEAD = timedelta(days=366)
Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _json_integer(value: object) -> object:
    """JSON Schema's `integer` is any number without a fraction, 3.0 included; `true` and
    `"3"` are not numbers (pydantic's lax int took `false` as priority 0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as JSON Schema means it: 3 and 3.0, not true, "3" or 3.5.
WholeNumber = Annotated[StrictInt, BeforeValidator(_json_integer)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS)]
Address = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ADDRESS_CHARS)]


class Channel(StrEnum):
    email = "email"
    sms = "sms"
    whatsapp = "whatsapp"
    push = "push"
    chat = "chat"
    webhook = "webhook"
    in_app = "in_app"
    alert = "alert"


class Priority(StrEnum):
    low = "low"
    normal = "normal"
    high = "high"
    critical = "critical"


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(description="The tenant's id for the user.")
    # Shape checks only (one @, a dot in the domain; digits for a phone): the provider is the
    # judge of deliverability, but obvious garbage is refused here with the field named.
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone: str | None = Field(default=None, max_length=32, pattern=r"^\+?[0-9][0-9 ().-]{2,31}$")
    locale: str | None = Field(default=None, max_length=35, examples=["en-GB"])
    timezone: str | None = Field(default=None, max_length=64, examples=["Europe/London"])
    addresses: dict[Annotated[str, StringConstraints(max_length=32)], Address] = Field(
        default_factory=dict,
        max_length=8,
        description="Channel -> address where the channel has no field above: push (device "
        "token), chat (channel id), webhook (URL).",
        examples=[{"push": "fcm-device-token"}],
    )


def given(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema for "`field` is present and matches `schema`" (so not null): the
    building block of the either/or rules, which the bodies' nullable fields cannot say
    with `required` alone."""
    return {"required": [field], "properties": {field: schema}}


class Content(BaseModel):
    """Inline Jinja2 templates, rendered with `data` by the render stage."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                given(f, {"type": "string", "minLength": 1}) for f in ("subject", "text", "html")
            ]
        },
    )

    subject: str | None = None
    text: str | None = None
    # validate_default: the check below runs even when html is absent.
    html: str | None = Field(default=None, validate_default=True)

    @field_validator("html")
    @classmethod
    def _within_size_and_not_empty(cls, html: str | None, info: ValidationInfo) -> str | None:
        parts = [info.data.get("subject"), info.data.get("text"), html]
        if not any(parts):
            raise ValueError("content needs at least one of subject, text or html")
        size = sum(len(p.encode()) for p in parts if p)
        if size > MAX_CONTENT_BYTES:
            raise ValueError(f"content is {size} bytes; at most {MAX_CONTENT_BYTES} are allowed")
        return html


class NotificationCreate(BaseModel):
    """A request to notify recipients on channels, with a template or inline content."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # "Either template_id or content", as the schema can say it with nullable
            # fields: exactly one of them present and not null.
            "oneOf": [
                given("template_id", {"type": "string"}),
                given("content", {"type": "object"}),
            ],
            "examples": [
                {
                    "recipients": [{"user_id": "u-42", "email": "ada@example.com"}],
                    "channels": ["email", "in_app"],
                    "content": {"subject": "Hi {{ name }}", "text": "Your order shipped."},
                    "data": {"name": "Ada"},
                }
            ],
        },
    )

    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    channels: list[Channel] = Field(min_length=1, description="Duplicates are ignored.")
    template_id: Id | None = Field(default=None, description="Either this or content.")
    template_version: WholeNumber | None = Field(
        default=None,
        ge=1,
        description="With template_id: this version, not the published one.",
    )
    content: Content | None = Field(
        default=None, validate_default=True, description="Either this or template_id."
    )
    category: Literal["transactional", "marketing", "system", "alert"] | None = Field(
        default=None,
        description="For inline content (a template's own category wins); preferences and "
        "digests are per category, and marketing takes the bulk lane.",
    )
    send_at: AwareDatetime | None = Field(
        default=None,
        description="Hold until then (ISO 8601 with a UTC offset); a time already past sends "
        "now; at most 366 days ahead.",
    )
    data: dict[str, Any] = Field(default_factory=dict, description="Template variables.")
    priority: Priority = Priority.normal
    idempotency_key: Id | None = Field(
        default=None,
        description="Requests of one tenant with the same key are delivered once. "
        "The Idempotency-Key header, when given, wins.",
    )
    batch_id: Id | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_ENTRIES
    )
    providers: dict[Channel, Id] = Field(
        default_factory=dict,
        description="Per channel, the provider to try first (then the tenant's order): one "
        "of the tenant's own ('sendgrid-eu' or '<tenant>:sendgrid-eu'), a platform one "
        "('*:<name>') or an environment one ('env:<name>'). Another tenant's is refused (422).",
    )
    fallback_channels: list[Channel] = Field(
        default_factory=list,
        description="Channels to try, in order, when a channel's delivery fails for good.",
    )

    @field_validator("recipients")
    @classmethod
    def _unique_recipients(cls, recipients: list[Recipient]) -> list[Recipient]:
        seen: set[str] = set()
        for recipient in recipients:
            if recipient.user_id in seen:
                raise ValueError(f"user_id {recipient.user_id!r} appears more than once")
            seen.add(recipient.user_id)
        return recipients

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, channels: list[Channel]) -> list[Channel]:
        return list(dict.fromkeys(channels))

    @field_validator("template_version")
    @classmethod
    def _version_needs_a_template(cls, version: int | None, info: ValidationInfo) -> int | None:
        if version is not None and info.data.get("template_id") is None:
            raise ValueError("template_version is only for a template_id")
        return version

    @field_validator("send_at")
    @classmethod
    def _not_too_far_ahead(cls, send_at: datetime | None) -> datetime | None:
        return check_schedule_horizon(send_at)

    @field_validator("content", mode="after")
    @classmethod
    def _template_or_content(cls, content: Content | None, info: ValidationInfo) -> Content | None:
        if "template_id" not in info.data:
            return content  # template_id itself is invalid and already reported
        has_template = info.data["template_id"] is not None
        if content is None and not has_template:
            raise ValueError("either template_id or content is required")
        if content is not None and has_template:
            raise ValueError("give either template_id or content, not both")
        return content

    @field_validator("data")
    @classmethod
    def _data_size(cls, data: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(data, separators=(",", ":")).encode())
        if size > MAX_DATA_BYTES:
            raise ValueError(f"data is {size} bytes as JSON; at most {MAX_DATA_BYTES} are allowed")
        return data


def check_schedule_horizon(send_at: datetime | None) -> datetime | None:
    if send_at is not None and send_at > datetime.now(UTC) + MAX_SCHEDULE_AHEAD:
        raise ValueError(f"send_at may be at most {MAX_SCHEDULE_AHEAD.days} days ahead")
    return send_at


class Reschedule(BaseModel):
    """A new send_at for a held notification (a time already past releases it now)."""

    model_config = ConfigDict(extra="forbid")

    send_at: AwareDatetime = Field(description="ISO 8601 with a UTC offset; at most 366 days.")

    @field_validator("send_at")
    @classmethod
    def _not_too_far_ahead(cls, send_at: datetime) -> datetime:
        checked = check_schedule_horizon(send_at)
        assert checked is not None
        return checked


class NotificationRef(BaseModel):
    notification_id: str
    user_id: str
    channel: Channel


class Accepted(BaseModel):
    """Kafka has acknowledged the request; one notification per recipient x channel."""

    request_id: str
    notifications: list[NotificationRef]


class StatusEventOut(BaseModel):
    event_id: str
    status: str
    reason: str | None
    retriable: bool
    provider: str | None
    provider_message_id: str | None
    stage: str
    attempt: int
    deferred_until: datetime | None
    occurred_at: datetime


class NotificationOut(BaseModel):
    """The latest state of a notification (its highest-ranked status) and its history."""

    notification_id: str
    tenant_id: str
    request_id: str
    batch_id: str | None
    channel: str | None
    recipient_id: str | None
    status: str
    reason: str | None
    retriable: bool
    provider: str | None
    provider_message_id: str | None
    request_occurred_at: datetime
    created_at: datetime
    updated_at: datetime
    events: list[StatusEventOut]


class FieldError(BaseModel):
    field: str = Field(examples=["recipients.0.user_id"])
    message: str = Field(examples=["Field required"])


class ErrorBody(BaseModel):
    error: str = Field(examples=["validation_failed"])
    message: str = Field(default="", examples=["request body is invalid"])
    detail: list[FieldError] = Field(default_factory=list)
