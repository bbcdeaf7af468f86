"""The long tail through Apprise: any service Apprise speaks, configured by URL.

Registered for the "chat" channel, but a tenant may route any channel to it (Apprise reaches
email, SMS and push services too). The message goes to the configured URLs' own targets, not
to `message.to`. Apprise URLs carry credentials, so they are SecretStr, never logged and
never put in a reason.

Apprise reports success or failure with no cause, so every failure is retriable (the retry
path bounds it) and none carries Retry-After. See docs/connectors/apprise.md.
"""

from __future__ import annotations

import logging

import apprise
import httpx
from pydantic import Field, SecretStr

from connectors.base import Connector, DeliveryResult, OutboundMessage, ProviderConfig
from connectors.errors import ConfigurationError, RetryableDeliveryError

NOTIFY_TYPES = frozenset(kind.value for kind in apprise.NotifyType)

# Apprise's DEBUG lines print each service's endpoint URL, and many services carry their token
# in the path (Discord, Slack, Telegram). Unless someone configured the apprise logger on
# purpose, hold it at INFO so turning on DEBUG elsewhere does not write those tokens to logs.
if logging.getLogger("apprise").level == logging.NOTSET:
    logging.getLogger("apprise").setLevel(logging.INFO)


class AppriseConfig(ProviderConfig):
    urls: list[SecretStr] = Field(min_length=1)


class AppriseConnector(Connector[AppriseConfig]):
    channel = "chat"
    name = "apprise"
    config_model = AppriseConfig
    # Each service behind Apprise has its own limits; set one per tenant if needed.
    rate_per_sec = None
    # Apprise has no idempotency key to pass on.
    honours_idempotency_key = False

    def __init__(self, config: AppriseConfig, *, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(config, http=None)  # Apprise uses its own HTTP client
        # Fail at configuration time rather than on every send. Only the position is named:
        # the URL itself holds credentials.
        for number, url in enumerate(config.urls, start=1):
            if apprise.Apprise.instantiate(url.get_secret_value()) is None:
                raise ConfigurationError(f"Apprise URL #{number} is not a valid Apprise URL")

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        # A fresh Apprise object per send: its services hold per-instance throttle state that
        # would otherwise sleep a worker thread between our sends. Pacing is the pipeline's job.
        apobj = apprise.Apprise()
        apobj.add([url.get_secret_value() for url in self.config.urls])
        result = await apobj.async_notify(
            body=message.text,
            title=message.subject or "",
            notify_type=_notify_type(message),
            body_format=apprise.NotifyFormat.TEXT,
        )
        ok = bool(result)
        # Apprise 2.x answers an AppriseResult (with a status); 1.x a plain bool.
        status = getattr(getattr(result, "status", None), "name", None)
        close = getattr(result, "close", None)
        if callable(close):
            close()  # releases Apprise's captured-log storage
        if not ok:
            detail = f" ({status})" if status else ""
            raise RetryableDeliveryError(
                f"Apprise reported failure{detail}; Apprise gives no further detail"
            )
        return DeliveryResult(outcome="sent", provider=self.name)


def _notify_type(message: OutboundMessage) -> str:
    """Apprise's notify type (info, success, warning, failure) from data["apprise_type"]."""
    kind = message.data.get("apprise_type")
    return kind if isinstance(kind, str) and kind in NOTIFY_TYPES else "info"
