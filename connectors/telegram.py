"""Telegram: the Bot API's sendMessage.

`message.to` is a chat id: a user's or group's numeric id (what the bot sees once the user
has started it), or `@channelusername` for a public channel the bot can post in.

The bot token is part of the URL path (`/bot<token>/sendMessage`), so it must never reach a
reason or a log line: ChatConnector scrubs reasons and registers the token with the httpx
log filter (see connectors/chat_common.py). See docs/connectors/telegram.md.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

import httpx
from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.chat_common import ChatConnector, fit, json_object
from connectors.errors import (
    InvalidAddressError,
    PermanentDeliveryError,
    ProviderRejectedError,
    RetryableDeliveryError,
)
from connectors.http import HttpProviderConfig, parse_retry_after, raise_for_status
from connectors.telegram_html import telegram_html, visible_length

TEXT_LEN = 4_096  # after entity parsing, i.e. visible characters
# 400 descriptions that mean the chat id itself is wrong (as opposed to the content).
ADDRESS_MARKERS = (
    "chat not found",
    "user not found",
    "peer_id_invalid",
    "chat_id is empty",
    "upgraded to a supergroup",
)


class TelegramConfig(HttpProviderConfig):
    base_url: str = "https://api.telegram.org"
    # From @BotFather: "123456789:AA…".
    token: SecretStr


class TelegramConnector(ChatConnector[TelegramConfig]):
    channel = "chat"
    name = "telegram"
    config_model = TelegramConfig
    # About 30 messages per second per bot in total (and 1/s within one chat, 20/min in a
    # group).
    rate_per_sec = 30.0
    max_body_len = TEXT_LEN
    # sendMessage takes no idempotency key; a retry after a lost answer can post twice.
    honours_idempotency_key = False

    def secrets(self) -> Iterable[str]:
        return (self.config.token.get_secret_value(),)

    async def post(self, message: OutboundMessage) -> DeliveryResult:
        token = self.config.token.get_secret_value()
        response = await self.request(
            "POST", self.url(f"bot{token}/sendMessage"), json=payload(message)
        )
        body = json_object(response)
        if body.get("ok") is True and isinstance(body.get("result"), dict):
            result = body["result"]
            chat = result.get("chat")
            chat_id = chat.get("id", message.to) if isinstance(chat, dict) else message.to
            # A message_id is unique within its chat only; the pair names the message.
            message_id = f"{chat_id}:{result.get('message_id')}"
            return DeliveryResult(
                outcome="delivered", provider=self.name, provider_message_id=message_id
            )
        raise _error(body, response)


def payload(message: OutboundMessage) -> dict[str, Any]:
    plain = f"{message.subject}\n\n{message.text}" if message.subject else message.text
    body: dict[str, Any] = {"chat_id": message.to, "text": fit(plain, TEXT_LEN)}
    if message.html:
        markup = telegram_html(message.html)
        if message.subject:
            markup = f"<b>{html.escape(message.subject, quote=False)}</b>\n\n{markup}"
        # HTML cannot be cut safely (a tag may be split); too long or empty: send the text.
        if markup and visible_length(markup) <= TEXT_LEN:
            body.update(text=markup, parse_mode="HTML")
    return body


def _error(body: dict[str, Any], response: httpx.Response) -> Exception:
    code = body.get("error_code", response.status_code)
    description = str(body.get("description") or "")
    parameters = body.get("parameters")
    if not isinstance(parameters, dict):
        parameters = {}
    if not description:
        # Not the Bot API's JSON (a proxy page, an outage): the HTTP status decides.
        raise_for_status(response, what="from Telegram")
        return RetryableDeliveryError("unexpected answer from Telegram (no ok/result)")
    reason = f"Telegram {code}: {description}"
    if code == 429:
        seconds = parameters.get("retry_after")
        retry_after = (
            float(seconds)
            if isinstance(seconds, int | float)
            else parse_retry_after(response.headers.get("Retry-After"))
        )
        return RetryableDeliveryError(reason, retry_after=retry_after)
    if code == 403:
        # Bot blocked by the user, user deactivated, bot kicked from the group: the recipient
        # side refuses this bot, permanently for this address; not the provider's fault.
        return InvalidAddressError(reason)
    if code == 400 and any(marker in description.lower() for marker in ADDRESS_MARKERS):
        if "migrate_to_chat_id" in parameters:
            reason += f" (new chat id {parameters['migrate_to_chat_id']})"
        return InvalidAddressError(reason)
    if code in (401, 404):
        # 401 Unauthorized: a revoked or wrong token. 404 Not Found: a malformed one.
        return ProviderRejectedError(reason)
    if isinstance(code, int) and code >= 500:
        return RetryableDeliveryError(reason)
    return PermanentDeliveryError(reason)
