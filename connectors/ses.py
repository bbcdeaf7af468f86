"""Email through Amazon SES (API v2 SendEmail), signed with SigV4; receipts from SES events
published to SNS.

SES names its error in the `x-amzn-ErrorType` header; the status mapping of connectors.http
applies, refined by that name:

    TooManyRequestsException, ThrottlingException          RetryableDeliveryError
    AccountSuspendedException, SendingPausedException,     ProviderRejectedError: this account
    MailFromDomainNotVerifiedException, NotFoundException  or its settings (another provider
    (the configuration set), MessageRejected "... not      may work)
    verified" (sandbox, unverified identity)
    BadRequestException about address syntax               InvalidAddressError (the recipient:
                                                           the sender is validated in config)
    MessageRejected, other BadRequestException             PermanentDeliveryError

See docs/connectors/ses.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import Field, SecretStr, field_validator, model_validator

from connectors import aws
from connectors.base import DeliveryResult, OutboundMessage
from connectors.egress import Egress
from connectors.errors import (
    DeliveryError,
    InvalidAddressError,
    PermanentDeliveryError,
    ProviderRejectedError,
    RetryableDeliveryError,
)
from connectors.http import (
    HttpConnector,
    HttpProviderConfig,
    excerpt,
    parse_retry_after,
    raise_for_status,
)
from connectors.receipts import Receipt, ReceiptStatus

log = logging.getLogger(__name__)

NAME = "ses"
SIGNING_NAME = "ses"  # SES v2's SigV4 service name (its endpoint prefix is "email")
_THROTTLED = frozenset({"TooManyRequestsException", "ThrottlingException"})
_ACCOUNT = frozenset(
    {
        "AccountSuspendedException",
        "SendingPausedException",
        "MailFromDomainNotVerifiedException",
        "NotFoundException",
    }
)
# SES's wording when an address fails its syntax check; it does not say which address.
_ADDRESS_SYNTAX = re.compile(
    r"illegal address|invalid email address|missing final '@domain'|missing domain"
    r"|missing local name|contains control or whitespace|contains illegal character",
    re.I,
)
# Tag names and values: ASCII letters, digits, "_" and "-" only, up to 256 characters.
_TAG_VALUE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class SesConfig(HttpProviderConfig):
    region: str = Field("us-east-1", pattern=r"^[a-z0-9-]+$")
    # Empty means the region's endpoint, https://email.{region}.amazonaws.com.
    base_url: str = ""
    # Not a secret (it is in every request's Authorization header); the secret key is.
    access_key_id: str
    secret_access_key: SecretStr
    session_token: SecretStr | None = None
    # "notify@acme.com" or "Acme <notify@acme.com>"; a verified SES identity.
    sender: str
    # Needed for event publishing (receipts); SES publishes our tags only through one.
    configuration_set: str | None = None
    # The SNS topic the configuration set publishes to: inbound receipts are accepted from
    # this topic only (any AWS account can sign SNS messages for topics of its own).
    sns_topic_arn: str | None = None

    @field_validator("sender")
    @classmethod
    def _sender_is_an_address(cls, value: str) -> str:
        # SES's address errors do not say which address is wrong; with the sender checked
        # here, they can be taken to mean the recipient.
        local, _, domain = parseaddr(value)[1].rpartition("@")
        if not local or "." not in domain or any(c.isspace() for c in local + domain):
            raise ValueError(f"not an email address: {value!r}")
        return value

    @model_validator(mode="after")
    def _regional_endpoint(self) -> SesConfig:
        if not self.base_url:
            self.base_url = f"https://email.{self.region}.amazonaws.com"
        return self


class SesConnector(HttpConnector[SesConfig]):
    channel = "email"
    name = NAME
    config_model = SesConfig
    # SES's documented sandbox rate; accounts out of the sandbox get their own quota, which
    # is configured per tenant.
    rate_per_sec = 1.0
    # SendEmail takes no idempotency token: a retried request is a second email.
    honours_idempotency_key = False

    def __init__(
        self,
        config: SesConfig,
        *,
        http: httpx.AsyncClient | None = None,
        egress: Egress | None = None,
    ) -> None:
        super().__init__(config, http=http, egress=egress)
        self._credentials = aws.credentials(
            config.access_key_id, config.secret_access_key, config.session_token
        )

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        url = self.url("/v2/email/outbound-emails")
        body = json.dumps(self._payload(message)).encode()
        headers = aws.sign(
            "POST",
            url,
            body,
            {"Content-Type": "application/json"},
            self.config.region,
            SIGNING_NAME,
            self._credentials,
        )
        response = await self.request("POST", url, content=body, headers=headers)
        if not response.is_success:
            _raise_for(response)
        return DeliveryResult(
            outcome="sent", provider=self.name, provider_message_id=_message_id(response)
        )

    def _payload(self, message: OutboundMessage) -> dict[str, Any]:
        body = {"Text": {"Data": message.text, "Charset": "UTF-8"}}
        if message.html:
            body["Html"] = {"Data": message.html, "Charset": "UTF-8"}
        payload: dict[str, Any] = {
            "FromEmailAddress": self.config.sender,
            "Destination": {"ToAddresses": [message.to]},
            "Content": {
                "Simple": {
                    "Subject": {"Data": message.subject or "", "Charset": "UTF-8"},
                    "Body": body,
                }
            },
        }
        # Published with every event, so receipts name their notification. A value SES would
        # refuse is left out rather than failing the send; that receipt then correlates by
        # message id.
        tags = [
            {"Name": name, "Value": value}
            for name, value in (
                ("notification_id", message.notification_id),
                ("tenant_id", message.tenant_id),
            )
            if _TAG_VALUE.match(value)
        ]
        if tags:
            payload["EmailTags"] = tags
        if self.config.configuration_set:
            payload["ConfigurationSetName"] = self.config.configuration_set
        return payload


def _message_id(response: httpx.Response) -> str | None:
    # SES accepted the message: a surprising body must not turn that into a retried send.
    try:
        value = response.json().get("MessageId")
    except (ValueError, AttributeError):
        return None
    return str(value) if value else None


def _raise_for(response: httpx.Response) -> None:
    code, detail = _error(response)
    reason = f"HTTP {response.status_code}{f' {code}' if code else ''}: {detail}"
    if code in _THROTTLED:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))  # SES sends none
        raise RetryableDeliveryError(reason, retry_after=retry_after)
    if code in _ACCOUNT or (code == "MessageRejected" and "not verified" in detail):
        raise ProviderRejectedError(reason)
    if code == "BadRequestException" and _ADDRESS_SYNTAX.search(detail):
        raise InvalidAddressError(reason)
    if code in ("MessageRejected", "BadRequestException"):
        raise PermanentDeliveryError(reason)
    try:
        raise_for_status(response)
    except DeliveryError as exc:
        # The shared status mapping, with SES's own words as the reason.
        raise type(exc)(reason, retry_after=exc.retry_after) from None


def _error(response: httpx.Response) -> tuple[str, str]:
    """(error name, message) from SES's REST-JSON error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    # "MessageRejected:http://internal.amazon.com/coral/com.amazonaws.sesv2/"
    code = response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0]
    if not code:
        # "com.amazonaws.sesv2#MessageRejected" or a bare name
        code = str(body.get("__type") or body.get("code") or "").rpartition("#")[2]
    message = body.get("message") or body.get("Message")
    return code, str(message) if message else excerpt(response)


def parse_receipts(notification: dict[str, Any]) -> list[Receipt]:
    """Receipts from one SNS notification carrying an SES event (raw message delivery off).

    Delivery -> delivered; Bounce of type Permanent -> bounced; Transient or Undetermined
    bounces (SES has stopped retrying, the address may be fine) -> failed; Reject (SES refused
    to send, e.g. a virus) -> failed. DeliveryDelay is skipped: SES is still retrying and a
    final event follows. Complaint, Send, Open, Click and the rest say nothing about delivery
    and are skipped. SNS subscription confirmations yield nothing. Verifying the SNS signature
    is the caller's job, before this.
    """
    if notification.get("Type") != "Notification":
        return []
    try:
        receipt = _receipt(notification)
    except (AttributeError, KeyError, TypeError, ValueError):
        # Its keys, not its content: the message part holds addresses and headers.
        log.warning("skipping a malformed SES notification (keys %s)", sorted(notification))
        return []
    return [receipt] if receipt is not None else []


def _receipt(notification: dict[str, Any]) -> Receipt | None:
    event = json.loads(notification["Message"])
    # Identity feedback notifications (no configuration set) name it notificationType.
    kind = event.get("eventType") or event.get("notificationType")
    mapped = _status(kind, event)
    if mapped is None:
        return None
    status, reason, when = mapped
    mail = event.get("mail") or {}
    tags = mail.get("tags") or {}
    return Receipt(
        provider=NAME,
        # SNS redelivers a notification with the same MessageId.
        provider_event_id=str(notification["MessageId"]),
        status=status,
        provider_message_id=mail.get("messageId"),
        notification_id=_tag(tags, "notification_id"),
        tenant_id=_tag(tags, "tenant_id"),
        reason=reason,
        occurred_at=_epoch_ms(when or mail["timestamp"]),
    )


def _status(
    kind: str | None, event: dict[str, Any]
) -> tuple[ReceiptStatus, str | None, Any] | None:
    if kind == "Delivery":
        return "delivered", None, event["delivery"].get("timestamp")
    if kind == "Bounce":
        bounce = event["bounce"]
        status: ReceiptStatus = "bounced" if bounce.get("bounceType") == "Permanent" else "failed"
        return status, _bounce_reason(bounce), bounce.get("timestamp")
    if kind == "Reject":
        return "failed", f"rejected by SES: {event['reject'].get('reason', '')}".strip(), None
    return None


def _bounce_reason(bounce: dict[str, Any]) -> str:
    kind = "/".join(str(bounce[key]) for key in ("bounceType", "bounceSubType") if bounce.get(key))
    recipients = bounce.get("bouncedRecipients") or [{}]
    diagnostic = recipients[0].get("diagnosticCode") or recipients[0].get("status")
    return f"{kind}: {diagnostic}" if diagnostic else kind or "bounced"


def _tag(tags: dict[str, Any], name: str) -> str | None:
    values = tags.get(name) or []  # published as {"name": ["value"]}
    return str(values[0]) if values else None


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


# SNS signs with certificates served from its regional endpoints only (AWS partitions: .com,
# China .com.cn); anything else could be an attacker's certificate.
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
# The fields SNS signs, in order, by message type; a missing optional field (Subject) is
# left out of the string to sign.
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]
_SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


def is_sns_url(url: str, *, certificate: bool = False) -> bool:
    """Whether `url` is an https URL on an SNS endpoint (for SigningCertURL, `certificate`:
    also a .pem path), so fetching it cannot be steered to another host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or port not in (None, 443) or parts.username or parts.password:
        return False
    host_ok = bool(SNS_HOST.match(parts.hostname or ""))
    return host_ok and (not certificate or parts.path.endswith(".pem"))


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The bytes SNS signed: "Name\nvalue\n" for each signed field of the message's type.

    KeyError for a message type SNS does not sign this way or a missing required field.
    """
    fields = _SIGNED_FIELDS[str(message.get("Type"))]
    lines = []
    for name in fields:
        if message.get(name) is None:
            if name == "Subject":  # SNS signs Subject only when the message has one
                continue
            raise KeyError(name)
        lines.append(f"{name}\n{message[name]}\n")
    return "".join(lines).encode()


def verify_sns_signature(message: Mapping[str, Any], certificate_pem: bytes) -> bool:
    """Whether an SNS message's `Signature` (SignatureVersion 1: RSA SHA-1, 2: RSA SHA-256)
    verifies with the certificate fetched from its SigningCertURL.

    Only the signature: the caller checks `is_sns_url(SigningCertURL, certificate=True)`
    before fetching, and that TopicArn is the one configured.
    """
    algorithm = _SIGNATURE_HASHES.get(str(message.get("SignatureVersion")))
    if algorithm is None:
        return False
    try:
        signed = sns_string_to_sign(message)
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    except (KeyError, ValueError, binascii.Error):
        return False
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        return False
    return True
