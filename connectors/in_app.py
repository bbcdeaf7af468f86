"""In-app inbox: a notification becomes an InAppMessage event on `notifications.inbox`.

The Postgres sink turns those events into the inbox table the shim serves. The connector
only needs a way to publish, injected by the deliver stage.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from connectors.base import Connector, DeliveryResult, OutboundMessage, ProviderConfig

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]  # (key, InAppMessage record)


class InAppConfig(ProviderConfig):
    pass


class InAppConnector(Connector[InAppConfig]):
    channel = "in_app"
    name = "in_app"
    config_model = InAppConfig
    max_body_len = 10_000

    def __init__(self, config: InAppConfig, publish: Publish) -> None:
        super().__init__(config, http=None)
        self._publish = publish

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        record = {
            "notification_id": message.notification_id,
            "tenant_id": message.tenant_id,
            "user_id": message.to,
            "title": message.subject,
            "body": message.text,
            "html": message.html,
            "data_json": message.data_json,
            "created_at": int(time.time() * 1000),
        }
        await self._publish(f"{message.tenant_id}:{message.to}", record)
        # Placing the message in the inbox is the delivery.
        return DeliveryResult(
            outcome="delivered", provider=self.name, provider_message_id=message.notification_id
        )
