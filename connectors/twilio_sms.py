"""SMS through Twilio Programmable Messaging, with the twilio SDK (docs/connectors/twilio.md).

The SDK builds the request and raises TwilioRestException for error answers; the transport
is connectors.twilio_http (httpx, origin = `base_url`). Errors map by Twilio error code first,
then by HTTP status as in connectors.http:

    21211, 21614          invalid / non-mobile 'To' number       InvalidAddressError
    20003, 20005, 21408,  credentials, inactive account, region  ProviderRejectedError
    21606, 21608, 21659,  not enabled, sender not ours, trial
    63007                 account, WhatsApp sender unknown
    20429                 too many requests                      RetryableDeliveryError
    other codes           HTTP status: 408/425/429/5xx retriable (with Retry-After),
                          401/403 ProviderRejectedError, other 4xx PermanentDeliveryError
    timeout, connection                                          RetryableDeliveryError

The answer's message SID is the provider message id; Twilio's status callbacks (delivered,
undelivered, failed, read) become Receipts through `parse_receipts`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import SecretStr, model_validator
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.response import Response
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.rest import Client

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
    RETRYABLE_STATUS,
    HttpConnector,
    HttpProviderConfig,
    parse_retry_after,
    transport_failure,
)
from connectors.receipts import Receipt, ReceiptStatus
from connectors.twilio_http import TWILIO_API, TwilioHttpxClient

INVALID_ADDRESS_CODES = frozenset({21211, 21614})
PROVIDER_REJECTED_CODES = frozenset({20003, 20005, 21408, 21606, 21608, 21659, 63007})
RETRYABLE_CODES = frozenset({20429})

# Sent on every create request. Twilio documents this header on the webhooks it sends us;
# we found no documentation that the Messages API deduplicates on it, so the connector
# does not claim idempotency (see docs/connectors/twilio.md).
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

# Status callback MessageStatus -> receipt status; queued/sending/sent/accepted are progress.
RECEIPT_STATUS: dict[str, ReceiptStatus] = {
    "delivered": "delivered",
    "undelivered": "failed",
    "failed": "failed",
    "read": "read",
}


class TwilioConfig(HttpProviderConfig):
    base_url: str = TWILIO_API
    account_sid: str
    auth_token: SecretStr
    # The sender: a Twilio number in E.164 (WhatsApp: the WhatsApp-enabled number, with or
    # without the `whatsapp:` prefix), or a Messaging Service that picks one from its pool.
    from_number: str | None = None
    messaging_service_sid: str | None = None
    # Where Twilio posts status callbacks; `notification_id` is appended as a query parameter.
    status_callback: str | None = None

    @model_validator(mode="after")
    def _needs_a_sender(self) -> TwilioConfig:
        if not (self.from_number or self.messaging_service_sid):
            raise ValueError("set from_number or messaging_service_sid")
        return self


class TwilioSmsConnector(HttpConnector[TwilioConfig]):
    channel = "sms"
    name = "twilio"
    config_model = TwilioConfig
    # US/Canada long code: 1 message segment per second per number (toll-free 3, short code
    # 100); Twilio queues faster sends rather than rejecting them. Configure per tenant.
    rate_per_sec = 1.0
    max_body_len = 1600  # Twilio's Body limit; longer is error 21617
    honours_idempotency_key = False

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        transport = TwilioHttpxClient(
            self._http,
            base_url=self.config.base_url,
            timeout=self.config.timeout_seconds,
            headers={IDEMPOTENCY_HEADER: message.idempotency_key},
        )
        # A Client per send is cheap (its resources are built lazily) and keeps each send's
        # transport, headers and last response separate under concurrency.
        client = Client(
            self.config.account_sid,
            self.config.auth_token.get_secret_value(),
            http_client=transport,
        )
        try:
            created = await client.messages.create_async(**self.params(message))
        except (TwilioRestException, TwilioServiceException) as exc:
            raise twilio_error(exc, transport.last_response) from exc
        except httpx.TransportError as exc:  # timeouts included
            raise transport_failure(exc, self.config.timeout_seconds) from exc
        return DeliveryResult(outcome="sent", provider=self.name, provider_message_id=created.sid)

    def params(self, message: OutboundMessage) -> dict[str, Any]:
        """Keyword arguments for `messages.create_async`."""
        params: dict[str, Any] = {"to": self.address(message.to), **self.content(message)}
        if self.config.from_number:
            params["from_"] = self.address(self.config.from_number)
        if self.config.messaging_service_sid:
            params["messaging_service_sid"] = self.config.messaging_service_sid
        if self.config.status_callback:
            params["status_callback"] = with_query(
                self.config.status_callback, notification_id=message.notification_id
            )
        return params

    def address(self, number: str) -> str:
        return number

    def content(self, message: OutboundMessage) -> dict[str, Any]:
        # Plain SMS only: media_urls would turn it into MMS (US/Canada, priced differently).
        return {"body": message.text}


def with_query(url: str, **params: str) -> str:
    split = urlsplit(url)
    query = parse_qsl(split.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(split._replace(query=urlencode(query)))


def twilio_error(
    exc: TwilioRestException | TwilioServiceException, response: Response | None
) -> DeliveryError:
    """The DeliveryError for a Twilio error answer (see the module docstring)."""
    status, code = int(exc.status), exc.code
    text = getattr(exc, "msg", "") or getattr(exc, "detail", "") or getattr(exc, "title", "")
    reason = f"Twilio HTTP {status}, error {code}: {text}"[:EXCERPT_LEN]
    headers = response.headers if response is not None and response.headers else {}
    if code in INVALID_ADDRESS_CODES:
        return InvalidAddressError(reason)
    if code in PROVIDER_REJECTED_CODES:
        return ProviderRejectedError(reason)
    if code in RETRYABLE_CODES or status in RETRYABLE_STATUS or status >= 500:
        return RetryableDeliveryError(
            reason, retry_after=parse_retry_after(headers.get("Retry-After"))
        )
    if status in (401, 403):
        return ProviderRejectedError(reason)
    return PermanentDeliveryError(reason)


def parse_receipts(
    form: dict[str, str], *, provider: str = "twilio", now: float | None = None
) -> list[Receipt]:
    """Receipts from one Twilio status callback (its form fields).

    Pass the callback URL's query parameters in `form` too: `notification_id` arrives there.
    The callback carries no event time, so `occurred_at` is the time it is parsed.
    """
    status = RECEIPT_STATUS.get(form.get("MessageStatus", ""))
    sid = form.get("MessageSid")
    if status is None or not sid:
        return []
    error = form.get("ErrorCode")
    return [
        Receipt(
            provider=provider,
            provider_event_id=f"{sid}:{form['MessageStatus']}",
            status=status,
            provider_message_id=sid,
            notification_id=form.get("notification_id") or None,
            reason=f"Twilio error {error}" if error else None,
            occurred_at=int((time.time() if now is None else now) * 1000),
        )
    ]


# Headers of a signed status callback (the second only when Twilio names its algorithm).
SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"


class _FormParams(dict[str, list[str]]):
    """Form fields with repeated names kept: RequestValidator reads them through `getall`."""

    def getall(self, name: str) -> list[str]:
        return self[name]


def verify_callback(
    auth_token: str | SecretStr,
    url: str,
    form: Iterable[tuple[str, str]],
    signature: str,
    *,
    signature_settings: str | None = None,
) -> bool:
    """Whether `signature` (X-Twilio-Signature) is Twilio's for this URL and form body.

    Checked by the SDK's RequestValidator: base64 HMAC-SHA1 (or HMAC-SHA256 when the
    X-Twilio-Webhooks-Signature-Settings header, `signature_settings`, says so) keyed with
    the auth token, over the URL Twilio called (query included) followed by each form field's
    name and value, sorted by name. `url` must be that public URL exactly.
    """
    token = auth_token.get_secret_value() if isinstance(auth_token, SecretStr) else auth_token
    params = _FormParams()
    for name, value in form:
        params.setdefault(name, []).append(value)
    algorithm = get_signature_algorithm(signature_settings)
    return bool(RequestValidator(token).validate(url, params, signature, algorithm=algorithm))
