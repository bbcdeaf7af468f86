"""Mattermost: REST API v4 `POST /api/v4/posts` with a token, or an incoming webhook.

API mode (`token`, a bot or personal access token): `message.to` is a channel id (26
characters, as in the channel's "View Info"); the bot must be a member of the channel.

Webhook mode (`webhook_url`): `message.to` is sent as the webhook's `channel` override, so it
is a channel name (the URL handle, e.g. `town-square`) or `@username` for a direct message.
A webhook locked to its channel refuses other channels (403).

Mattermost error bodies are `{"id": "<error id>", "message": …, "status_code": …}`; the id
refines what the status says. See docs/connectors/mattermost.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self

import httpx
from pydantic import SecretStr, model_validator

from connectors.base import DeliveryResult, OutboundMessage
from connectors.chat_common import ChatConnector, fit, json_object, url_secrets
from connectors.errors import InvalidAddressError, ProviderRejectedError, RetryableDeliveryError
from connectors.http import HttpProviderConfig, excerpt, raise_for_status

MESSAGE_LEN = 16_383  # a post's limit, in characters (runes)
CHANNEL_NOT_FOUND = "web.incoming_webhook.channel.app_error"
# The webhook does not exist (400) or webhooks are disabled on the server (501).
WEBHOOK_UNUSABLE = frozenset(
    {"web.incoming_webhook.invalid.app_error", "web.incoming_webhook.disabled.app_error"}
)


class MattermostConfig(HttpProviderConfig):
    # Your server, e.g. https://chat.example.com (there is no public default); API mode only.
    base_url: str = ""
    token: SecretStr | None = None
    # https://<server>/hooks/<key>: webhook mode.
    webhook_url: SecretStr | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        if (self.token is None) == (self.webhook_url is None):
            raise ValueError("set exactly one of token (REST API) or webhook_url (webhook)")
        if self.token is not None and not self.base_url:
            raise ValueError("base_url (the Mattermost server) is required with a token")
        return self


class MattermostConnector(ChatConnector[MattermostConfig]):
    channel = "chat"
    name = "mattermost"
    config_model = MattermostConfig
    # Self-hosted: limits are the server's. When an admin enables rate limiting, the default
    # is 10 requests per second per client.
    rate_per_sec = 10.0
    max_body_len = MESSAGE_LEN
    # Neither createPost nor webhooks take an idempotency key; a retry after a lost answer can
    # post twice.
    honours_idempotency_key = False

    def secrets(self) -> Iterable[str]:
        if self.config.token is not None:
            yield self.config.token.get_secret_value()
        if self.config.webhook_url is not None:
            yield from url_secrets(self.config.webhook_url.get_secret_value())

    async def post(self, message: OutboundMessage) -> DeliveryResult:
        if self.config.webhook_url is not None:
            response = await self.request(
                "POST",
                self.config.webhook_url.get_secret_value(),
                json={"text": text(message), "channel": message.to},
            )
            _raise_for_mattermost(response, api=False)
            # Webhooks answer `ok` and no post id.
            return DeliveryResult(outcome="delivered", provider=self.name)
        assert self.config.token is not None  # the config validator guarantees one mode
        response = await self.request(
            "POST",
            self.url("api/v4/posts"),
            json={"channel_id": message.to, "message": text(message)},
            headers={"Authorization": f"Bearer {self.config.token.get_secret_value()}"},
        )
        _raise_for_mattermost(response, api=True)
        post_id = json_object(response).get("id")
        if not post_id:
            raise RetryableDeliveryError("unexpected answer from Mattermost (no post id)")
        return DeliveryResult(outcome="delivered", provider=self.name, provider_message_id=post_id)


def text(message: OutboundMessage) -> str:
    composed = f"**{message.subject}**\n\n{message.text}" if message.subject else message.text
    return fit(composed, MESSAGE_LEN)


def _raise_for_mattermost(response: httpx.Response, *, api: bool) -> None:
    code = response.status_code
    if 200 <= code < 300:
        return
    body: dict[str, Any] = json_object(response)
    error_id = str(body.get("id") or "")
    detail = str(body.get("message") or excerpt(response))
    reason = (
        f"Mattermost {code} {error_id}: {detail}" if error_id else f"Mattermost {code}: {detail}"
    )
    # API mode: 404 for a channel that does not exist, 400 for a malformed channel_id.
    # Webhook mode: the channel named by `to` does not exist. (A channel the bot cannot
    # post in answers 403 in both modes, which the shared mapping makes a provider refusal.)
    if (
        error_id == CHANNEL_NOT_FOUND
        or (api and code == 404)
        or (api and code == 400 and "channel_id" in detail)
    ):
        raise InvalidAddressError(reason)
    if error_id in WEBHOOK_UNUSABLE:
        raise ProviderRejectedError(reason)
    raise_for_status(response, what="from Mattermost")
