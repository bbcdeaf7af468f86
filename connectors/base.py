"""The provider interface: one async `send` that returns a typed DeliveryResult.

A provider module declares a Connector subclass with its channel, name and limits as class
attributes, a pydantic configuration model (secrets as SecretStr), and implements `send`.
Callers use `deliver`, which adds what every provider needs: body trimming, a timeout, and
turning exceptions into results, so a provider never crashes a stage.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from connectors.errors import DeliveryError

Outcome = Literal["sent", "delivered", "failed"]


class OutboundMessage(BaseModel):
    """What a provider needs to send one notification; built by the deliver stage."""

    model_config = ConfigDict(frozen=True)

    notification_id: str
    tenant_id: str
    channel: str
    to: str
    subject: str | None = None
    text: str
    html: str | None = None
    data_json: str = "{}"
    # Stable across attempts and replays; passed to providers that accept one.
    idempotency_key: str


class DeliveryResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    provider: str
    provider_message_id: str | None = None
    retriable: bool = False
    reason: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_seconds: float = 10.0


ConfigT = TypeVar("ConfigT", bound=ProviderConfig)


class Connector(ABC, Generic[ConfigT]):
    channel: ClassVar[str]
    name: ClassVar[str]
    max_body_len: ClassVar[int | None] = None
    rate_per_sec: ClassVar[float | None] = None

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @abstractmethod
    async def send(self, message: OutboundMessage) -> DeliveryResult:
        """Hand the message to the provider. Raise a DeliveryError subclass on failure."""

    async def deliver(self, message: OutboundMessage) -> DeliveryResult:
        message = self._trimmed(message)
        try:
            return await asyncio.wait_for(self.send(message), self.config.timeout_seconds)
        except DeliveryError as exc:
            return self.failure(str(exc), retriable=exc.retriable, retry_after=exc.retry_after)
        except TimeoutError:
            return self.failure(f"timed out after {self.config.timeout_seconds}s", retriable=True)

    def failure(
        self, reason: str, *, retriable: bool, retry_after: float | None = None
    ) -> DeliveryResult:
        return DeliveryResult(
            outcome="failed",
            provider=self.name,
            retriable=retriable,
            reason=reason,
            retry_after=retry_after,
        )

    def _trimmed(self, message: OutboundMessage) -> OutboundMessage:
        limit = self.max_body_len
        if limit is None or len(message.text) <= limit:
            return message
        return message.model_copy(update={"text": message.text[: limit - 1] + "…"})

    async def close(self) -> None:
        """Release connections; most providers hold none."""
