"""WhatsApp through Meta's Cloud API: `POST {base_url}/{api_version}/{phone_number_id}/messages`.

docs/connectors/meta-whatsapp.md. The message is a template when
`message.data["whatsapp_template"]` names one, else an image/document with the first of
`message.media_urls` (text as caption), else text. Graph API errors map by `error.code` first
(developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes), then by HTTP status as
in connectors.http:

    InvalidAddressError     131026 undeliverable to this number, 131021 recipient = sender
    ProviderRejectedError   0/190 token, 3/10/200-299 permissions, 368 policy block,
                            130497 country restricted, 131030 not in the test allow list,
                            131031 account locked, 131042 payment, 131045 certificate,
                            133010 number not registered
    RetryableDeliveryError  1/2/131000/131016/133004 unknown or unavailable,
                            4/17/80007/130429/131048/131056 app, account, throughput, spam
                            and pair rate limits, 131057 maintenance
    other codes             by HTTP status, mostly 400 -> PermanentDeliveryError: 131047
                            outside the 24-hour window, 100/131008/131009 parameters,
                            132xxx templates...

Webhook `statuses` become Receipts through `parse_receipts`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.errors import (
    DeliveryError,
    InvalidAddressError,
    PermanentDeliveryError,
    ProviderRejectedError,
    RetryableDeliveryError,
)
from connectors.http import (
    EXCERPT_LEN,
    HttpConnector,
    HttpProviderConfig,
    excerpt,
    parse_retry_after,
    raise_for_status,
)
from connectors.receipts import Receipt, ReceiptStatus

INVALID_ADDRESS_CODES = frozenset({131021, 131026})
PROVIDER_REJECTED_CODES = frozenset(
    {0, 3, 10, 190, 368, 130497, 131030, 131031, 131042, 131045, 133010, *range(200, 300)}
)
RETRYABLE_CODES = frozenset(
    {1, 2, 4, 17, 80007, 130429, 131000, 131016, 131048, 131056, 131057, 133004}
)

CAPTION_MAX = 1024  # image/document captions; text bodies allow 4096
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# Webhook status -> receipt status; `sent` (handed to WhatsApp) has no Receipt status.
RECEIPT_STATUS: dict[str, ReceiptStatus] = {
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
}


class MetaWhatsAppConfig(HttpProviderConfig):
    base_url: str = "https://graph.facebook.com"
    api_version: str = "v23.0"
    phone_number_id: str  # the business phone number's id, not the number itself
    access_token: SecretStr  # a system-user token with whatsapp_business_messaging
    # For incoming webhooks, not used to send: the Meta app's secret (`verify_signature`)
    # and the verify token chosen when subscribing the callback URL (`verify_subscription`).
    app_secret: SecretStr | None = None
    webhook_verify_token: SecretStr | None = None


class MetaWhatsAppConnector(HttpConnector[MetaWhatsAppConfig]):
    channel = "whatsapp"
    name = "meta_whatsapp"
    config_model = MetaWhatsAppConfig
    rate_per_sec = 80.0  # Cloud API default per business phone number (up to 1,000)
    max_body_len = 4096  # text message body
    honours_idempotency_key = False

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        payload = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.to.removeprefix("whatsapp:"),
            # Echoed in every status webhook for this message, so receipts name it directly.
            "biz_opaque_callback_data": message.notification_id,
            **content(message),
        }
        path = f"{self.config.api_version}/{self.config.phone_number_id}/messages"
        token = self.config.access_token.get_secret_value()
        response = await self.request(
            "POST", self.url(path), json=payload, headers={"Authorization": f"Bearer {token}"}
        )
        if response.is_error:
            error = graph_error(response)
            if error is not None:
                raise error
            raise_for_status(response)  # not a Graph error body: by HTTP status alone
        try:
            message_id = response.json()["messages"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RetryableDeliveryError(f"answer without message id: {excerpt(response)}") from exc
        return DeliveryResult(outcome="sent", provider=self.name, provider_message_id=message_id)


def content(message: OutboundMessage) -> dict[str, Any]:
    """The type-specific part of the message object."""
    template = message.data.get("whatsapp_template")
    if template is not None:
        return {"type": "template", "template": template_object(template)}
    if message.media_urls:
        # One media object per message; WhatsApp shows the text as its caption.
        link = message.media_urls[0]
        kind = "image" if link.lower().split("?")[0].endswith(IMAGE_SUFFIXES) else "document"
        caption = message.text
        if len(caption) > CAPTION_MAX:
            caption = caption[: CAPTION_MAX - 1] + "…"
        return {"type": kind, kind: {"link": link, "caption": caption}}
    return {"type": "text", "text": {"body": message.text}}


def template_object(template: Any) -> dict[str, Any]:
    """`whatsapp_template` -> the Cloud API template object (docs/connectors/meta-whatsapp.md)."""
    name = template.get("name") if isinstance(template, dict) else None
    language = template.get("language") if isinstance(template, dict) else None
    if isinstance(language, str):
        language = {"code": language}
    if not isinstance(name, str) or not isinstance(language, dict):
        # The Cloud API sends templates by name and language (Twilio's content_sid is no use).
        raise PermanentDeliveryError("whatsapp_template needs a name and a language")
    result: dict[str, Any] = {"name": name, "language": language}
    components = template.get("components")
    parameters = template.get("parameters")
    if isinstance(components, list):
        result["components"] = components
    elif isinstance(parameters, list):
        # Shorthand: positional body parameters, strings or full parameter objects.
        result["components"] = [
            {
                "type": "body",
                "parameters": [
                    p if isinstance(p, dict) else {"type": "text", "text": str(p)}
                    for p in parameters
                ],
            }
        ]
    return result


def graph_error(response: httpx.Response) -> DeliveryError | None:
    """The DeliveryError a Graph API error body means, or None if the body is not one."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return None
    code = error["code"]
    details = (error.get("error_data") or {}).get("details")
    reason = f"Graph HTTP {response.status_code}, error {code}: {error.get('message', '')}"
    if details:
        reason += f" ({details})"
    reason = reason[:EXCERPT_LEN]
    if code in INVALID_ADDRESS_CODES:
        return InvalidAddressError(reason)
    if code in PROVIDER_REJECTED_CODES:
        return ProviderRejectedError(reason)
    if code in RETRYABLE_CODES or response.status_code == 429 or response.status_code >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return RetryableDeliveryError(reason, retry_after=retry_after)
    if response.status_code in (401, 403):
        return ProviderRejectedError(reason)
    return PermanentDeliveryError(reason)


def parse_receipts(payload: Mapping[str, Any]) -> list[Receipt]:
    """Receipts from one `messages` webhook: `entry[].changes[].value.statuses[]`."""
    receipts = []
    for status in _statuses(payload):
        kind = RECEIPT_STATUS.get(str(status.get("status")))
        message_id, timestamp = status.get("id"), str(status.get("timestamp", ""))
        if kind is None or not message_id or not timestamp.isdigit():
            continue
        errors = [e for e in status.get("errors") or [] if isinstance(e, dict)]
        receipts.append(
            Receipt(
                provider=MetaWhatsAppConnector.name,
                provider_event_id=f"{message_id}:{status['status']}",
                status=kind,
                provider_message_id=message_id,
                notification_id=status.get("biz_opaque_callback_data") or None,
                reason="; ".join(_describe(e) for e in errors) or None,
                occurred_at=int(timestamp) * 1000,
            )
        )
    return receipts


def _statuses(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = []
    for entry in payload.get("entry") or []:
        for change in (entry.get("changes") or []) if isinstance(entry, dict) else []:
            value = change.get("value") if isinstance(change, dict) else None
            statuses = value.get("statuses") if isinstance(value, dict) else None
            found += [s for s in statuses or [] if isinstance(s, dict)]
    return found


def _describe(error: dict[str, Any]) -> str:
    details = (error.get("error_data") or {}).get("details")
    text = f"{error.get('code')} {error.get('title') or error.get('message') or ''}".strip()
    return f"{text}: {details}" if details else text


SIGNATURE_HEADER = "X-Hub-Signature-256"


def verify_signature(app_secret: str | SecretStr, body: bytes, header: str) -> bool:
    """Whether X-Hub-Signature-256 (`sha256=<hex HMAC-SHA256 of the raw body, keyed with
    the app secret>`) signs this body. Constant-time; a malformed header is simply false."""
    secret = app_secret.get_secret_value() if isinstance(app_secret, SecretStr) else app_secret
    scheme, _, digest = header.strip().partition("=")
    if scheme.lower() != "sha256" or not digest:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    # Bytes: compare_digest refuses non-ASCII str, which a hostile header may be.
    return hmac.compare_digest(expected.encode(), digest.lower().encode())


def verify_subscription(verify_token: str | SecretStr, mode: str | None, token: str | None) -> bool:
    """Whether Meta's GET verification request (`hub.mode`, `hub.verify_token`) is for us:
    mode `subscribe` and the verify token we gave Meta. The caller then echoes
    `hub.challenge`."""
    expected = (
        verify_token.get_secret_value() if isinstance(verify_token, SecretStr) else verify_token
    )
    if mode != "subscribe" or token is None:
        return False
    return hmac.compare_digest(expected.encode(), token.encode())
