"""The provider interface: one async `send` that returns a typed DeliveryResult.

A provider module declares a Connector subclass with its channel, name, configuration model
and limits as class attributes (secrets in the configuration as SecretStr), and implements
`send`. Callers use `deliver`, which adds what every provider needs: body trimming, a
timeout, and turning exceptions into results, so a provider never crashes a stage.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict

from connectors.egress import Egress, Target, url_targets
from connectors.errors import DeliveryError

log = logging.getLogger(__name__)

Outcome = Literal["sent", "delivered", "failed"]


class OutboundMessage(BaseModel):
    """What a provider needs to send one notification; built by the deliver stage."""

    model_config = ConfigDict(frozen=True)

    notification_id: str
    tenant_id: str
    channel: str
    # The channel address: email address, phone number (E.164), device token, chat id, URL…
    to: str
    subject: str | None = None
    text: str
    html: str | None = None
    # The request's data (JSON). Providers read documented keys from it, such as
    # `media_urls` or `whatsapp_template`; see docs/connectors/.
    data_json: str = "{}"
    # Stable across attempts, providers and replays; passed to providers that accept one.
    idempotency_key: str
    recipient_id: str | None = None
    priority: Literal["low", "normal", "high", "critical"] = "normal"
    category: str | None = None
    attempt: int = 0

    @property
    def data(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data_json)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def media_urls(self) -> list[str]:
        urls = self.data.get("media_urls") or []
        return [url for url in urls if isinstance(url, str)] if isinstance(urls, list) else []


class DeliveryResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    provider: str
    provider_message_id: str | None = None
    retriable: bool = False
    reason: str | None = None
    retry_after: float | None = None
    # Failed because of this provider (outage, credentials): the next provider may succeed.
    provider_fault: bool = False
    # The address or device token is invalid: the deliver stage emits a `device.invalid` event.
    address_invalid: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"


class ProviderConfig(BaseModel):
    # hide_input_in_errors: a validation error must never echo a (secret) value.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    timeout_seconds: float = 10.0


ConfigT = TypeVar("ConfigT", bound=ProviderConfig)


class Connector(ABC, Generic[ConfigT]):
    channel: ClassVar[str]
    name: ClassVar[str]
    config_model: ClassVar[type[ProviderConfig]]
    max_body_len: ClassVar[int | None] = None
    # The provider's documented default throughput, per credential; configurable per tenant.
    rate_per_sec: ClassVar[float | None] = None
    # Whether the provider deduplicates on the idempotency key we pass it.
    honours_idempotency_key: ClassVar[bool] = False

    def __init__(
        self,
        config: ConfigT,
        *,
        http: httpx.AsyncClient | None = None,
        egress: Egress | None = None,
    ) -> None:
        self.config = config
        self._shared_http = http
        # Where this connector may connect (connectors/egress.py): private targets are
        # refused unless the operator allowed them.
        self.egress = egress or Egress()

    @classmethod
    def targets(cls, config: ProviderConfig) -> list[Target]:
        """The hosts a configuration makes us connect to, each named by its setting, for the
        shim's check of a tenant's configuration. By default every URL-valued setting."""
        return url_targets(config)

    @abstractmethod
    async def send(self, message: OutboundMessage) -> DeliveryResult:
        """Hand the message to the provider. Raise a DeliveryError subclass on failure."""

    async def deliver(self, message: OutboundMessage) -> DeliveryResult:
        message = self._trimmed(message)
        try:
            return await asyncio.wait_for(self.send(message), self.config.timeout_seconds)
        except DeliveryError as exc:
            return self.failure(
                str(exc),
                retriable=exc.retriable,
                retry_after=exc.retry_after,
                provider_fault=exc.provider_fault,
                address_invalid=exc.address_invalid,
            )
        except TimeoutError:
            return self.failure(
                f"timed out after {self.config.timeout_seconds}s",
                retriable=True,
                provider_fault=True,
            )
        except Exception as exc:
            # A bug in a connector must not stop the partition; the retry path bounds it. It is
            # not evidence of a provider outage: a message that provokes it must not trip the
            # breaker every tenant of this provider shares (nor fail over to the next).
            log.exception("provider %s raised unexpectedly", self.name)
            return self.failure(
                f"connector error: {type(exc).__name__}", retriable=True, provider_fault=False
            )

    def failure(
        self,
        reason: str,
        *,
        retriable: bool,
        retry_after: float | None = None,
        provider_fault: bool = False,
        address_invalid: bool = False,
    ) -> DeliveryResult:
        return DeliveryResult(
            outcome="failed",
            provider=self.name,
            retriable=retriable,
            reason=reason,
            retry_after=retry_after,
            provider_fault=provider_fault,
            address_invalid=address_invalid,
        )

    def _trimmed(self, message: OutboundMessage) -> OutboundMessage:
        limit = self.max_body_len
        if limit is None or len(message.text) <= limit:
            return message
        return message.model_copy(update={"text": message.text[: limit - 1] + "…"})

    async def close(self) -> None:
        """Release connections; most providers hold none."""
