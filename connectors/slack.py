"""Slack: the Web API's chat.postMessage with a bot token, or an incoming webhook.

Web API mode (`token`): `message.to` is a channel id (C…, G…) or a user id (U…, posts in
the app's DM with that user). Slack answers HTTP 200 even for most errors, with
`{"ok": false, "error": "<code>"}`; the code decides the outcome (see the sets below).

Webhook mode (`webhook_url`): the webhook is bound to one channel when it is created, so
`message.to` is not sent. Slack answers `ok` as plain text, or an error code as plain text
with a 4xx/5xx status. See docs/connectors/slack.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self

import httpx
from pydantic import SecretStr, model_validator

from connectors.base import DeliveryResult, OutboundMessage
from connectors.chat_common import ChatConnector, fit, json_object, url_secrets
from connectors.errors import (
    InvalidAddressError,
    PermanentDeliveryError,
    ProviderRejectedError,
    RetryableDeliveryError,
)
from connectors.http import HttpProviderConfig, parse_retry_after, raise_for_status

# Slack's documented limits: a header block's text, a section block's text, blocks per message.
HEADER_LEN = 150
SECTION_LEN = 3_000
MAX_BLOCKS = 50

# `ok: false` error codes by what they mean for us. Anything else (msg_too_long, no_text,
# invalid_blocks, …) is a problem with this request: permanent.
ADDRESS_ERRORS = frozenset({"channel_not_found", "is_archived", "not_in_channel"})
CREDENTIAL_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "missing_scope",
        "not_allowed_token_type",
        "ekm_access_denied",
    }
)
# internal_error and fatal_error may have posted the message before failing (Slack says so),
# so a retry can duplicate it; losing the notification is the worse outcome.
TRANSIENT_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
    }
)


class SlackConfig(HttpProviderConfig):
    base_url: str = "https://slack.com"
    # A bot token (xoxb-…) with chat:write: Web API mode.
    token: SecretStr | None = None
    # An incoming webhook URL (https://hooks.slack.com/services/…): webhook mode.
    webhook_url: SecretStr | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        if (self.token is None) == (self.webhook_url is None):
            raise ValueError("set exactly one of token (Web API) or webhook_url (webhook)")
        return self


class SlackConnector(ChatConnector[SlackConfig]):
    channel = "chat"
    name = "slack"
    config_model = SlackConfig
    # chat.postMessage allows about one message per second per channel (short bursts are
    # tolerated); incoming webhooks have the same limit.
    rate_per_sec = 1.0
    # Slack truncates `text` beyond 40,000 characters.
    max_body_len = 40_000
    # chat.postMessage and webhooks take no idempotency key; a retry after a lost answer
    # can post twice.
    honours_idempotency_key = False

    def secrets(self) -> Iterable[str]:
        if self.config.token is not None:
            yield self.config.token.get_secret_value()
        if self.config.webhook_url is not None:
            yield from url_secrets(self.config.webhook_url.get_secret_value())

    async def post(self, message: OutboundMessage) -> DeliveryResult:
        payload: dict[str, Any] = {"text": message.text}
        if message.subject:
            payload["blocks"] = blocks(message.subject, message.text)
        if self.config.webhook_url is not None:
            return await self._post_webhook(self.config.webhook_url.get_secret_value(), payload)
        assert self.config.token is not None  # the config validator guarantees one mode
        return await self._post_api(self.config.token.get_secret_value(), message.to, payload)

    async def _post_api(self, token: str, to: str, payload: dict[str, Any]) -> DeliveryResult:
        response = await self.request(
            "POST",
            self.url("api/chat.postMessage"),
            json={"channel": to, **payload},
            # Slack warns about a JSON body without a charset.
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json; charset=utf-8",
            },
        )
        raise_for_status(response, what="from Slack")
        body = json_object(response)
        if body.get("ok") is True and body.get("ts"):
            # A ts is unique within its channel only; the pair names the message.
            message_id = f"{body.get('channel') or to}:{body['ts']}"
            return DeliveryResult(
                outcome="delivered", provider=self.name, provider_message_id=message_id
            )
        raise _api_error(body, response)

    async def _post_webhook(self, url: str, payload: dict[str, Any]) -> DeliveryResult:
        response = await self.request("POST", url, json=payload)
        if response.status_code in (404, 410):
            # channel_not_found, channel_is_archived, no_service, no_team: the webhook or the
            # channel it is bound to is gone. That is this configuration's problem (`to` was
            # not used), so another provider may still reach the recipient.
            raise ProviderRejectedError(
                f"Slack webhook {response.status_code}: {response.text.strip()[:100]}"
            )
        raise_for_status(response, what="from the Slack webhook")
        # Webhooks answer `ok` and no message id.
        return DeliveryResult(outcome="delivered", provider=self.name)


def blocks(subject: str, text: str) -> list[dict[str, Any]]:
    """The subject as a header block, the text in section blocks of Slack's maximum size."""
    header = {"type": "header", "text": {"type": "plain_text", "text": fit(subject, HEADER_LEN)}}
    chunks = [text[i : i + SECTION_LEN] for i in range(0, len(text), SECTION_LEN)]
    sections = [{"type": "section", "text": {"type": "mrkdwn", "text": c}} for c in chunks]
    return [header, *sections[: MAX_BLOCKS - 1]]


def _api_error(body: dict[str, Any], response: httpx.Response) -> Exception:
    error = body.get("error")
    if not isinstance(error, str):
        # A 200 that is not Slack's JSON (a proxy page): we cannot tell whether it posted.
        return RetryableDeliveryError("unexpected answer from Slack (no ok/ts)")
    reason = f"Slack error: {error}"
    if error in ADDRESS_ERRORS:
        return InvalidAddressError(reason)
    if error in CREDENTIAL_ERRORS:
        return ProviderRejectedError(reason)
    if error in TRANSIENT_ERRORS:
        return RetryableDeliveryError(
            reason, retry_after=parse_retry_after(response.headers.get("Retry-After"))
        )
    return PermanentDeliveryError(reason)
