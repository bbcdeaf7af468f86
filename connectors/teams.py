"""Microsoft Teams: an Adaptive Card posted to a Workflows webhook or a legacy incoming webhook.

The webhook URL is in the configuration, never in `message.to`: it carries its own signature
(`sig=…`) and anyone holding it can post, while `to` travels in clear through the stage
topics. A webhook posts to the one channel or chat it was created for, so `to` is not sent;
one provider configuration per Teams channel. See docs/connectors/teams.md.

Answers:
- Workflows (Power Automate) webhooks answer 202 Accepted: a flow run was queued and posts the
  card later, so the outcome is `sent`, not `delivered`.
- Legacy Office 365 connector webhooks answer 200 with the body `1` once posted (`delivered`).
  They also answer 200 when posting failed, with a body like "Webhook message delivery failed
  with error: Microsoft Teams endpoint returned HTTP error 429 …"; that inner status is
  mapped as if it were the HTTP status.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import httpx
from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.chat_common import ChatConnector, fit, url_secrets
from connectors.errors import ProviderRejectedError, RetryableDeliveryError
from connectors.http import HttpProviderConfig, excerpt, raise_for_status

CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
# Mobile Teams clients lag behind desktop in the card versions they render; 1.4 is safe.
CARD_VERSION = "1.4"
SUBJECT_LEN = 200
_WRAPPED_STATUS = re.compile(r"returned HTTP error (\d{3})")


class TeamsConfig(HttpProviderConfig):
    # Not used to build requests (the webhook URL is complete); kept for the shared shape.
    base_url: str = "https://outlook.office.com"
    # The Workflows "Post to a channel when a webhook request is received" URL, or a legacy
    # incoming webhook URL (https://….webhook.office.com/webhookb2/…).
    webhook_url: SecretStr


class TeamsConnector(ChatConnector[TeamsConfig]):
    channel = "chat"
    name = "teams"
    config_model = TeamsConfig
    # Teams throttles a webhook that sends more than four requests in one second.
    rate_per_sec = 4.0
    # A message is limited to 28 KB. 6,000 characters of text (4 UTF-8 bytes each at worst)
    # plus a 200-character subject and the card's own JSON stay under it.
    max_body_len = 6_000
    # Webhooks take no idempotency key; a retry after a lost answer can post twice.
    honours_idempotency_key = False

    def secrets(self) -> Iterable[str]:
        return url_secrets(self.config.webhook_url.get_secret_value())

    async def post(self, message: OutboundMessage) -> DeliveryResult:
        response = await self.request(
            "POST", self.config.webhook_url.get_secret_value(), json=card_message(message)
        )
        if response.status_code == 404:
            # The webhook or its workflow was deleted: this configuration is broken.
            raise ProviderRejectedError(f"HTTP 404 from the Teams webhook: {excerpt(response)}")
        raise_for_status(response, what="from the Teams webhook")
        if response.status_code == 202:
            return DeliveryResult(outcome="sent", provider=self.name)
        _raise_wrapped_failure(response)
        return DeliveryResult(outcome="delivered", provider=self.name)


def card_message(message: OutboundMessage) -> dict[str, Any]:
    body: list[dict[str, Any]] = []
    if message.subject:
        body.append(
            {
                "type": "TextBlock",
                "text": fit(message.subject, SUBJECT_LEN),
                "style": "heading",
                "size": "Medium",
                "weight": "Bolder",
                "wrap": True,
            }
        )
    body.append({"type": "TextBlock", "text": message.text, "wrap": True})
    card = {"$schema": CARD_SCHEMA, "type": "AdaptiveCard", "version": CARD_VERSION, "body": body}
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _raise_wrapped_failure(response: httpx.Response) -> None:
    """A legacy webhook's 200 that reports a failure in its body."""
    text = response.text.strip()
    wrapped = _WRAPPED_STATUS.search(text)
    if wrapped:
        inner = httpx.Response(int(wrapped.group(1)), text=text)
        raise_for_status(inner, what="inside a 200 from the Teams webhook")
    if "delivery failed" in text.lower():
        # e.g. "Error contacting Microsoft Teams endpoint": Teams' side, worth retrying.
        raise RetryableDeliveryError(f"Teams webhook: {excerpt(response)}")
