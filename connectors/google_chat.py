"""Google Chat: a space's incoming webhook (spaces.messages.create with the webhook's key).

The webhook URL (https://chat.googleapis.com/v1/spaces/<space>/messages?key=…&token=…) is in
the configuration: its key and token are the credential. A webhook posts to the one space it
was created in, so `message.to` is not sent; one provider configuration per space.

`data["thread_key"]`, when present, threads the message: replies go to the thread with that
key, and the first message with a new key starts it. See docs/connectors/google-chat.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.chat_common import ChatConnector, fit, json_object, url_secrets
from connectors.errors import ProviderRejectedError, RetryableDeliveryError
from connectors.http import HttpProviderConfig, excerpt, raise_for_status

# A message (text and cards) is limited to 32,000 bytes: 7,500 characters of at most 4 UTF-8
# bytes each, subject and JSON included, stay under it.
TEXT_LEN = 7_500


class GoogleChatConfig(HttpProviderConfig):
    # Not used to build requests (the webhook URL is complete); kept for the shared shape.
    base_url: str = "https://chat.googleapis.com"
    webhook_url: SecretStr


class GoogleChatConnector(ChatConnector[GoogleChatConfig]):
    channel = "chat"
    name = "google_chat"
    config_model = GoogleChatConfig
    # Message writes are limited to 60 per minute per space, shared by everything posting in it.
    rate_per_sec = 1.0
    max_body_len = TEXT_LEN
    # We pass the idempotency key as `requestId`, which spaces.messages.create documents as
    # returning the existing message instead of creating another; Google does not document it
    # for webhooks, so the pipeline must not count on it.
    honours_idempotency_key = False

    def secrets(self) -> Iterable[str]:
        return url_secrets(self.config.webhook_url.get_secret_value())

    async def post(self, message: OutboundMessage) -> DeliveryResult:
        params = {"requestId": message.idempotency_key}
        body: dict[str, Any] = {"text": text(message)}
        thread_key = message.data.get("thread_key")
        if isinstance(thread_key, str) and thread_key:
            body["thread"] = {"threadKey": thread_key}
            # Without this option Google ignores the thread key and starts a new thread.
            params["messageReplyOption"] = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
        # Merged, not replaced: the webhook URL's own key and token are query parameters.
        url = httpx.URL(self.config.webhook_url.get_secret_value()).copy_merge_params(params)
        response = await self.request("POST", str(url), json=body)
        if response.status_code == 404:
            # The space or the webhook was deleted: this configuration is broken.
            raise ProviderRejectedError(f"HTTP 404 from Google Chat: {excerpt(response)}")
        raise_for_status(response, what="from Google Chat")
        name = json_object(response).get("name")
        if not name:
            raise RetryableDeliveryError("unexpected answer from Google Chat (no message name)")
        # The resource name, spaces/<space>/messages/<message>.
        return DeliveryResult(outcome="delivered", provider=self.name, provider_message_id=name)


def text(message: OutboundMessage) -> str:
    # Google Chat's text formatting: *bold*.
    composed = f"*{message.subject}*\n{message.text}" if message.subject else message.text
    return fit(composed, TEXT_LEN)
