"""Inbound provider webhooks, per provider: which bodies it sends, how its signature is checked,
how its payload becomes Receipts.

The checks themselves are pure functions in each connector module, next to its
`parse_receipts`; an adapter here only takes them from the request (headers, raw body, the
URL the provider called) and the tenant's provider configuration. Every failed check raises
`Unauthorized` before anything is parsed, so an unsigned request produces nothing.

    provider (config.providers)   verified by
    twilio, twilio_whatsapp       X-Twilio-Signature over the public URL + form (twilio SDK)
    sendgrid                      ECDSA P-256 over timestamp + body (webhook_public_key)
    mailgun                       HMAC-SHA256 of timestamp + token in the body
                                  (webhook_signing_key); one body per token, in every process
    meta_whatsapp                 X-Hub-Signature-256, HMAC-SHA256 of the body (app_secret)
    ses                           the SNS message signature, certificate from an SNS host only,
                                  from the configured sns_topic_arn only, Timestamp under 1 h old
    webhook (generic)             X-Notification-Signature, our recipe (inbound_secret)
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from fastapi.exceptions import RequestValidationError
from pydantic import SecretStr, ValidationError

from api_shim import inbound_sns
from api_shim.errors import BadRequest, Forbidden, NotFound, Unauthorized
from connectors import mailgun, meta_whatsapp, sendgrid, ses, twilio_sms, webhook
from connectors.receipts import Receipt

JSON = frozenset({"application/json"})
# Fields in one form body; Twilio's status callbacks carry about twenty.
MAX_FORM_FIELDS = 200
# SNS messages older than this are refused (AWS: check Timestamp against replays); a little
# clock skew the other way is allowed.
SNS_MAX_AGE_SECONDS = 3600.0
SNS_MAX_SKEW_SECONDS = 300.0
# The one answer for every path that has no usable receipt endpoint (no such tenant, no such
# configuration, a provider that sends none): which of these it is is nobody's business.
NO_ENDPOINT = "there is no receipt endpoint at this path"


def no_endpoint() -> NotFound:
    return NotFound(NO_ENDPOINT)


@dataclass(frozen=True)
class InboundRequest:
    """What an adapter sees of one webhook request, after the configuration was found."""

    tenant_id: str
    provider_id: str
    provider: str  # the registry name on the configuration ("twilio", "sendgrid", ...)
    config: Any  # the connector's validated configuration model, secrets opened
    body: bytes
    headers: Mapping[str, str]  # case-insensitive (Starlette's Headers)
    url: str  # the URL the provider called: SHIM_PUBLIC_URL + path + query, if set
    query: list[tuple[str, str]]
    # (token, body) -> whether the body is the first this configuration saw with the token,
    # in any shim process (api_shim.inbound_tokens).
    first_use: Callable[[str, bytes], Awaitable[bool]]


class InboundProvider(ABC):
    content_types: ClassVar[frozenset[str]] = JSON
    # The configuration field holding the verification key; unset refuses every request.
    key_field: ClassVar[str]

    def has_key(self, config: Any) -> bool:
        return getattr(config, self.key_field, None) is not None

    @abstractmethod
    async def receipts(self, request: InboundRequest) -> list[Receipt]:
        """Verify the request (Unauthorized if it is not the provider's), then parse it."""

    def handshake(self, config: Any, query: Mapping[str, str]) -> str:
        """The answer to a GET verification handshake, for providers that have one."""
        raise no_endpoint()


def _secret(config: Any, field: str) -> str:
    value = getattr(config, field)
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def _header(request: InboundRequest, name: str) -> str:
    value = request.headers.get(name)
    if not value:
        raise Unauthorized(f"the {name} header is missing: the request is not signed")
    return value


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None


def _json_object(body: bytes) -> dict[str, Any]:
    payload = _json(body)
    if not isinstance(payload, dict):
        raise BadRequest("the body is not a JSON object")
    return payload


def _form(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(
            body.decode(),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        raise BadRequest("the form body is not UTF-8") from None
    except ValueError:
        raise BadRequest(f"the form body has more than {MAX_FORM_FIELDS} fields") from None


class TwilioInbound(InboundProvider):
    """Status callbacks (SMS and WhatsApp): `status_callback` on the configuration points
    here, and the connector appends `notification_id` to its query."""

    content_types = frozenset({"application/x-www-form-urlencoded"})
    key_field = "auth_token"

    async def receipts(self, request: InboundRequest) -> list[Receipt]:
        signature = _header(request, twilio_sms.SIGNATURE_HEADER)
        form = _form(request.body)
        settings_header = request.headers.get(twilio_sms.SIGNATURE_SETTINGS_HEADER)
        token = _secret(request.config, "auth_token")
        if not twilio_sms.verify_callback(
            token, request.url, form, signature, signature_settings=settings_header
        ):
            raise Unauthorized(
                f"{twilio_sms.SIGNATURE_HEADER} does not sign this URL and form with the "
                "configuration's auth_token (the URL checked is SHIM_PUBLIC_URL + path + query)"
            )
        # notification_id comes in the query of the callback URL, the rest in the form.
        fields = dict(form)
        fields.update(request.query)
        return twilio_sms.parse_receipts(fields, provider=request.provider)


class SendGridInbound(InboundProvider):
    key_field = "webhook_public_key"

    async def receipts(self, request: InboundRequest) -> list[Receipt]:
        signature = _header(request, sendgrid.SIGNATURE_HEADER)
        timestamp = _header(request, sendgrid.TIMESTAMP_HEADER)
        if not sendgrid.verify_event_webhook(
            request.config.webhook_public_key, request.body, signature, timestamp
        ):
            raise Unauthorized(
                f"{sendgrid.SIGNATURE_HEADER} does not verify with the configuration's "
                "webhook_public_key over this timestamp and body, or the timestamp is stale"
            )
        events = _json(request.body)
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise BadRequest("the body is not a JSON array of event objects")
        return sendgrid.parse_receipts(events)


class MailgunInbound(InboundProvider):
    """Mailgun signs timestamp + token, not the event: a captured signature could carry
    another event. So a token is bound to the first body it came with, across every shim
    process (a redelivery of the same request is still fine); see docs/api.md."""

    key_field = "webhook_signing_key"

    async def receipts(self, request: InboundRequest) -> list[Receipt]:
        payload = _json_object(request.body)
        block = payload.get("signature")
        if not isinstance(block, dict):
            raise Unauthorized("the body has no `signature` object: the request is not signed")
        if not mailgun.verify_webhook(request.config.webhook_signing_key, block):
            raise Unauthorized(
                "`signature` does not sign its timestamp and token with the configuration's "
                "webhook_signing_key, or the timestamp is stale"
            )
        if not await request.first_use(str(block["token"]), request.body):
            raise Unauthorized("this signature token was already used with another body")
        return mailgun.parse_receipts(payload)


class MetaInbound(InboundProvider):
    key_field = "app_secret"

    async def receipts(self, request: InboundRequest) -> list[Receipt]:
        signature = _header(request, meta_whatsapp.SIGNATURE_HEADER)
        if not meta_whatsapp.verify_signature(request.config.app_secret, request.body, signature):
            raise Unauthorized(
                f"{meta_whatsapp.SIGNATURE_HEADER} is not the HMAC-SHA256 of this body with "
                "the configuration's app_secret"
            )
        return meta_whatsapp.parse_receipts(_json_object(request.body))

    def handshake(self, config: Any, query: Mapping[str, str]) -> str:
        token = config.webhook_verify_token
        if token is None:
            raise Forbidden("the configuration has no webhook_verify_token")
        if not meta_whatsapp.verify_subscription(
            token, query.get("hub.mode"), query.get("hub.verify_token")
        ):
            raise Forbidden("hub.mode is not subscribe or hub.verify_token does not match")
        challenge = query.get("hub.challenge")
        if not challenge:
            raise BadRequest("hub.challenge is missing")
        return challenge


class SesInbound(InboundProvider):
    """SES events published to SNS, delivered over HTTPS (raw message delivery off)."""

    # SNS posts its JSON as text/plain.
    content_types = frozenset({"text/plain", "application/json"})
    key_field = "sns_topic_arn"

    async def receipts(self, request: InboundRequest) -> list[Receipt]:
        message = _json_object(request.body)
        if message.get("TopicArn") != request.config.sns_topic_arn:
            raise Unauthorized("TopicArn is not the configuration's sns_topic_arn")
        cert_url = str(message.get("SigningCertURL", ""))
        if not ses.is_sns_url(cert_url, certificate=True):
            raise Unauthorized("SigningCertURL is not an https .pem URL on an SNS endpoint")
        _check_sns_timestamp(message.get("Timestamp"))
        certificate = await inbound_sns.certificate(cert_url)
        if not ses.verify_sns_signature(message, certificate):
            raise Unauthorized("the SNS Signature does not verify with its signing certificate")
        if message.get("Type") == "SubscriptionConfirmation":
            subscribe_url = str(message.get("SubscribeURL", ""))
            if not ses.is_sns_url(subscribe_url):
                raise BadRequest("SubscribeURL is not an https URL on an SNS endpoint")
            await inbound_sns.confirm_subscription(subscribe_url)
            return []
        return ses.parse_receipts(message)


def _check_sns_timestamp(value: Any, now: float | None = None) -> None:
    """A signed SNS message stays valid for ever: one captured (or a redelivery from long ago)
    is refused once its Timestamp (signed too) is over SNS_MAX_AGE_SECONDS old."""
    now = time.time() if now is None else now
    try:
        sent = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        age = now - sent.timestamp()
    except ValueError:
        raise Unauthorized("the SNS Timestamp is missing or not an ISO 8601 time") from None
    if sent.tzinfo is None or not -SNS_MAX_SKEW_SECONDS <= age <= SNS_MAX_AGE_SECONDS:
        raise Unauthorized(
            f"the SNS Timestamp is stale (over {SNS_MAX_AGE_SECONDS / 3600:g} h old) or in "
            "the future: the message may be replayed"
        )


class GenericInbound(InboundProvider):
    """Our own recipe, for systems without a webhook format of their own (docs/api.md)."""

    key_field = "inbound_secret"

    async def receipts(self, request: InboundRequest) -> list[Receipt]:
        signature = _header(request, webhook.SIGNATURE_HEADER)
        timestamp = _header(request, webhook.TIMESTAMP_HEADER)
        secret = _secret(request.config, "inbound_secret")
        if not webhook.verify(secret, signature, timestamp, request.body):
            raise Unauthorized(
                f"{webhook.SIGNATURE_HEADER} does not sign this timestamp and body with the "
                "configuration's inbound_secret, or the timestamp is over 5 minutes off"
            )
        try:
            receipts = webhook.parse_receipts(_json(request.body), provider=request.provider)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_input=False)) from None
        # The reporting system picks its event ids: scoped to this configuration, so they
        # cannot collide with (and suppress) another tenant's receipts.
        scope = f"{request.tenant_id}:{request.provider_id}:"
        return [
            r.model_copy(update={"provider_event_id": scope + r.provider_event_id})
            for r in receipts
        ]


ADAPTERS: dict[str, InboundProvider] = {
    "twilio": TwilioInbound(),
    "twilio_whatsapp": TwilioInbound(),
    "sendgrid": SendGridInbound(),
    "mailgun": MailgunInbound(),
    "meta_whatsapp": MetaInbound(),
    "ses": SesInbound(),
    "webhook": GenericInbound(),
}

# Providers that report receipts, but whose webhooks are not verified yet: refused.
NOT_VERIFIED = {
    "vonage": "Vonage delivery receipts are not accepted yet: their signatures are not "
    "verified (docs/connectors/vonage.md)",
}
