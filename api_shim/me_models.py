"""HTTP models of the user endpoints (/api/v1/me/...): the inbox and preferences.

The events behind them are shaped by schemas/status_event.avsc and schemas/preferences.avsc;
these models describe the HTTP contract and validate input before it is encoded. The enums
are checked against the .avsc symbols by tests/integration/test_shim_inbox.py.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from api_shim.models import Channel

MAX_TEMPLATE_TOGGLES = 500
MAX_FREQUENCY_CAPS = 20
TemplateId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
_HH_MM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class NotificationStatus(StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"
    suppressed = "suppressed"
    deferred = "deferred"
    rendered = "rendered"
    queued = "queued"
    sent = "sent"
    delivered = "delivered"
    failed = "failed"
    bounced = "bounced"
    read = "read"
    cancelled = "cancelled"
    digested = "digested"
    unread = "unread"
    deleted = "deleted"


class Category(StrEnum):
    transactional = "transactional"
    marketing = "marketing"
    system = "system"
    alert = "alert"


# -- the inbox -----------------------------------------------------------------------------------


class InAppContent(BaseModel):
    """An in-app message's content, once it has reached the inbox."""

    title: str | None
    body: str
    html: str | None
    data: dict[str, Any]
    delivered_at: datetime = Field(description="When the message was placed in the inbox.")


class MyNotification(BaseModel):
    notification_id: str
    request_id: str
    batch_id: str | None
    channel: str | None
    status: str = Field(
        description="The headline state: the highest-ranked status seen (docs/status.md). "
        "`read` outranks `delivered`, and `unread` never becomes the headline; the read "
        "state of an in-app message is `read_at`."
    )
    reason: str | None
    requested_at: datetime = Field(description="When the notification was requested.")
    updated_at: datetime = Field(description="When the headline state was reached.")
    read_at: datetime | None = Field(
        description="In-app messages: when the user read it (null while unread); "
        "always null on other channels."
    )
    in_app: InAppContent | None = Field(
        description="The message's content for in-app messages that reached the inbox."
    )


class MyNotificationPage(BaseModel):
    items: list[MyNotification]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class UnreadCount(BaseModel):
    unread: int = Field(description="In-app messages neither read nor deleted.")


InboxAction = Literal["read", "unread", "deleted"]


class InboxActionAccepted(BaseModel):
    """The status event is on notifications.status (Kafka acknowledged it); the read model
    and the live streams follow it."""

    notification_id: str
    status: InboxAction
    event_id: str


class MarkedAllRead(BaseModel):
    marked: int = Field(description="How many `read` events were written (one per message).")
    more: bool = Field(
        description="True when more unread messages remained than one call marks; call "
        "again once the read model has caught up."
    )


# -- preferences ---------------------------------------------------------------------------------


class Toggle(BaseModel):
    """On/off for a category or a template, optionally per channel; null: no opinion."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    channels: dict[Channel, bool] = Field(default_factory=dict)


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(description="HH:MM, local time.", examples=["22:00"])
    end: str = Field(
        description="HH:MM, local time; before `start` crosses midnight.", examples=["07:00"]
    )
    timezone: str | None = Field(
        default=None,
        max_length=64,
        description="IANA name; null: the user's profile timezone, then the tenant's.",
        examples=["Europe/Paris"],
    )

    @field_validator("start", "end")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        if not _HH_MM.match(value):
            raise ValueError("must be a time of day as HH:MM (00:00 to 23:59)")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name is expected)") from exc
        return value


class FrequencyCap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel | None = Field(default=None, description="null: any channel.")
    category: Category | None = Field(default=None, description="null: any category.")
    max_count: int = Field(ge=1, le=100_000)
    period_seconds: int = Field(ge=1, le=366 * 24 * 3600)


class PreferencesIn(BaseModel):
    """The user's whole preferences record; it replaces the previous one (and the tenant's
    defaults, see docs/preferences.md)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "channels": {"sms": False},
                    "categories": {"marketing": {"enabled": False}},
                    "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"},
                }
            ]
        },
    )

    opted_out: bool = Field(default=False, description="Opted out of every channel.")
    do_not_disturb: bool = False
    channels: dict[Channel, bool] = Field(
        default_factory=dict, description="Channel -> enabled; a channel not listed is enabled."
    )
    categories: dict[Category, Toggle] = Field(default_factory=dict)
    templates: dict[TemplateId, Toggle] = Field(
        default_factory=dict, max_length=MAX_TEMPLATE_TOGGLES, description="Template id -> toggle."
    )
    quiet_hours: QuietHours | None = None
    frequency_caps: list[FrequencyCap] = Field(default_factory=list, max_length=MAX_FREQUENCY_CAPS)

    def record(self, tenant_id: str, user_id: str, updated_at: int) -> dict[str, Any]:
        """The Preferences event (schemas/preferences.avsc)."""
        return {
            "tenant_id": tenant_id,
            "user_id": user_id,
            "opted_out": self.opted_out,
            "do_not_disturb": self.do_not_disturb,
            "channels": {str(k): v for k, v in self.channels.items()},
            "categories": {str(k): _toggle(t) for k, t in self.categories.items()},
            "templates": {k: _toggle(t) for k, t in self.templates.items()},
            "quiet_hours": self.quiet_hours.model_dump(mode="json") if self.quiet_hours else None,
            "frequency_caps": [cap.model_dump(mode="json") for cap in self.frequency_caps],
            "updated_at": updated_at,
        }


def _toggle(toggle: Toggle) -> dict[str, Any]:
    return {"enabled": toggle.enabled, "channels": {str(k): v for k, v in toggle.channels.items()}}


class ToggleOut(BaseModel):
    enabled: bool | None
    channels: dict[str, bool]


class QuietHoursOut(BaseModel):
    start: str
    end: str
    timezone: str | None


class FrequencyCapOut(BaseModel):
    channel: str | None
    category: str | None
    max_count: int
    period_seconds: int


class PreferencesOut(BaseModel):
    """The preferences that apply to the user and where they come from."""

    source: Literal["user", "tenant_default", "none"] = Field(
        description="`user`: the user's own record; `tenant_default`: the user has none and "
        "the tenant's default preferences apply; `none`: neither exists (everything enabled)."
    )
    opted_out: bool = False
    do_not_disturb: bool = False
    channels: dict[str, bool] = Field(default_factory=dict)
    categories: dict[str, ToggleOut] = Field(default_factory=dict)
    templates: dict[str, ToggleOut] = Field(default_factory=dict)
    quiet_hours: QuietHoursOut | None = None
    frequency_caps: list[FrequencyCapOut] = Field(default_factory=list)
    updated_at: datetime | None = Field(
        default=None, description="When the user's record was written (null unless `user`)."
    )
