"""The long tail through Apprise: any service Apprise speaks, configured by URL.

Registered for the "chat" channel, but a tenant may route any channel to it (Apprise reaches
email, SMS and push services too). The message goes to the configured URLs' own targets, not
to `message.to`. Apprise URLs carry credentials, so they are SecretStr, never logged and
never put in a reason.

Apprise reports success or failure with no cause, so every failure is retriable (the retry
path bounds it) and none carries Retry-After. See docs/connectors/apprise.md.

The SSRF guard (connectors/egress.py): each URL's network target (`service_targets`: the host
of json://, xml://, gotify://, ...; an email URL's SMTP server) must resolve to public
addresses, checked by the shim and again before every send. Apprise opens its own
connections and resolves the name again, so unlike our HTTP and SMTP connectors this cannot
pin the checked address; docs/security.md says what that leaves open.
"""

from __future__ import annotations

import logging

import apprise
import httpx
from apprise.plugins.email import NotifyEmail
from pydantic import Field, SecretStr

from connectors.base import Connector, DeliveryResult, OutboundMessage, ProviderConfig
from connectors.egress import Egress, Target, TargetRefused, check_targets
from connectors.errors import ConfigurationError, RetryableDeliveryError

NOTIFY_TYPES = frozenset(kind.value for kind in apprise.NotifyType)
# Services whose URL names an account or token, not a host: Apprise sends them to the
# service's own public endpoint. Every other service's host is checked; add one here only
# after reading its plugin.
FIXED_ENDPOINT_PLUGINS = frozenset(
    {"NotifyDiscord", "NotifyTelegram", "NotifySlack", "NotifyPushover", "NotifyPushBullet"}
)

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

    def __init__(
        self,
        config: AppriseConfig,
        *,
        http: httpx.AsyncClient | None = None,
        egress: Egress | None = None,
    ) -> None:
        super().__init__(config, http=None, egress=egress)  # Apprise uses its own HTTP client
        # Fail at configuration time rather than on every send.
        self._targets = self.targets(config)

    @classmethod
    def targets(cls, config: ProviderConfig) -> list[Target]:
        assert isinstance(config, AppriseConfig)
        found: list[Target] = []
        for index, url in enumerate(config.urls):
            found += service_targets(url.get_secret_value(), index)
        return found

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        # Before every send: DNS may have changed since the configuration was checked.
        await check_targets(self._targets, self.egress)
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


def service_targets(url: str, index: int) -> list[Target]:
    """Where Apprise connects for `urls[index]`. Only the position is named, never the URL:
    it holds credentials."""
    setting = f"urls.{index}"
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        raise ConfigurationError(f"Apprise URL #{index + 1} is not a valid Apprise URL")
    if type(plugin).__name__ in FIXED_ENDPOINT_PLUGINS:
        return []
    if type(plugin).__name__ == "NotifyNtfy" and getattr(plugin, "mode", None) == "cloud":
        return []  # ntfy.sh
    if isinstance(plugin, NotifyEmail):
        host, port = plugin.smtp_host or plugin.host, plugin.port or 25
    else:
        host, port = plugin.host, plugin.port or (443 if plugin.secure else 80)
    if not isinstance(host, str) or not host:
        raise TargetRefused(f"{setting} names no host that can be checked")
    return [Target(setting, host, int(port))]


def _notify_type(message: OutboundMessage) -> str:
    """Apprise's notify type (info, success, warning, failure) from data["apprise_type"]."""
    kind = message.data.get("apprise_type")
    return kind if isinstance(kind, str) and kind in NOTIFY_TYPES else "info"
