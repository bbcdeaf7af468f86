"""Discord: execute a channel webhook with `?wait=true`, so Discord answers the created message.

The webhook URL (https://discord.com/api/webhooks/<id>/<token>) is in the configuration: the
token in it is the credential. A webhook posts to the one channel it was created in, so
`message.to` is not sent; one provider configuration per Discord channel.
See docs/connectors/discord.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.chat_common import ChatConnector, fit, json_object, url_secrets
from connectors.errors import ProviderRejectedError, RetryableDeliveryError
from connectors.http import HttpProviderConfig, excerpt, parse_retry_after, raise_for_status

TITLE_LEN = 256  # an embed title's limit


class DiscordConfig(HttpProviderConfig):
    # Not used to build requests (the webhook URL is complete); kept for the shared shape.
    base_url: str = "https://discord.com/api"
    webhook_url: SecretStr


class DiscordConnector(ChatConnector[DiscordConfig]):
    channel = "chat"
    name = "discord"
    config_model = DiscordConfig
    # A webhook's bucket allows 5 requests per 2 s, but messages into one channel are held to
    # about 30 a minute; 0.5/s is what a webhook sustains without 429s.
    rate_per_sec = 0.5
    # `content` is limited to 2,000 characters.
    max_body_len = 2_000
    # Executing a webhook takes no nonce or idempotency key; a retry after a lost answer can
    # post twice.
    honours_idempotency_key = False

    def secrets(self) -> Iterable[str]:
        return url_secrets(self.config.webhook_url.get_secret_value())

    async def post(self, message: OutboundMessage) -> DeliveryResult:
        url = httpx.URL(self.config.webhook_url.get_secret_value()).copy_merge_params(
            {"wait": "true"}
        )
        response = await self.request("POST", str(url), json=payload(message))
        _raise_for_discord(response)
        if response.status_code == 204:
            # Only without wait=true: accepted, but not confirmed as posted.
            return DeliveryResult(outcome="sent", provider=self.name)
        message_id = json_object(response).get("id")
        if not message_id:
            raise RetryableDeliveryError("unexpected answer from Discord (no message id)")
        return DeliveryResult(
            outcome="delivered", provider=self.name, provider_message_id=str(message_id)
        )


def payload(message: OutboundMessage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "content": message.text,
        # Rendered text may contain @everyone or role mentions from user data; never ping.
        "allowed_mentions": {"parse": []},
    }
    if message.subject:
        body["embeds"] = [{"title": fit(message.subject, TITLE_LEN)}]
    return body


def _raise_for_discord(response: httpx.Response) -> None:
    code = response.status_code
    if code == 429:
        body = json_object(response)
        # The body's retry_after (float seconds) is more precise than the header; a
        # Cloudflare-level 429 has only the header.
        seconds = body.get("retry_after")
        retry_after = (
            max(0.0, float(seconds))
            if isinstance(seconds, int | float)
            else parse_retry_after(response.headers.get("Retry-After"))
        )
        scope = " (global)" if body.get("global") else ""
        raise RetryableDeliveryError(f"Discord 429: rate limited{scope}", retry_after=retry_after)
    if code == 404:
        # {"message": "Unknown Webhook", "code": 10015}: deleted; this configuration is broken.
        raise ProviderRejectedError(f"HTTP 404 from Discord: {excerpt(response)}")
    raise_for_status(response, what="from Discord")
