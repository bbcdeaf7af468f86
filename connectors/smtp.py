"""Email over SMTP with aiosmtplib.

The host has no default: a tenant's configuration without one must not fall back to a relay
on our own machine (with a sender of its choosing). The connection is made to an address
resolved and checked by the SSRF guard (connectors/egress.py) and handed to aiosmtplib as a
socket, so TLS still verifies the certificate for `host`.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
from pydantic import Field, SecretStr

from connectors.base import Connector, DeliveryResult, OutboundMessage, ProviderConfig
from connectors.egress import Target, open_checked_socket
from connectors.errors import (
    InvalidAddressError,
    MessageRejectedError,
    PermanentDeliveryError,
    ProviderRejectedError,
    RetryableDeliveryError,
)


class SmtpConfig(ProviderConfig):
    host: str = Field(min_length=1)
    port: int = Field(25, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    start_tls: bool = False
    use_tls: bool = False
    sender: str = "notifications@example.com"


class SmtpConnector(Connector[SmtpConfig]):
    channel = "email"
    name = "smtp"
    config_model = SmtpConfig

    @classmethod
    def targets(cls, config: ProviderConfig) -> list[Target]:
        assert isinstance(config, SmtpConfig)
        return [Target("host", config.host, config.port)]

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        email = self._build(message)
        password = self.config.password.get_secret_value() if self.config.password else None
        try:
            sock = await open_checked_socket(
                self.config.host,
                self.config.port,
                self.egress,
                connect_timeout=self.config.timeout_seconds,
            )
        except RetryableDeliveryError as exc:  # DNS or connect; a refused target is permanent
            raise RetryableDeliveryError(f"SMTP connection failed: {exc}") from exc
        try:
            # With a socket, `hostname` is only the TLS server name (SNI and the certificate).
            await aiosmtplib.send(
                email,
                hostname=self.config.host,
                sock=sock,
                username=self.config.username,
                password=password,
                start_tls=self.config.start_tls,
                use_tls=self.config.use_tls,
                timeout=self.config.timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise InvalidAddressError(f"recipient refused: {exc}") from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise ProviderRejectedError(f"SMTP authentication failed: {exc.code}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            # RFC 5321: 4yz is a transient negative reply, 5yz permanent.
            error = RetryableDeliveryError if 400 <= exc.code < 500 else PermanentDeliveryError
            raise error(f"SMTP {exc.code}: {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RetryableDeliveryError(f"SMTP connection failed: {exc}") from exc
        finally:
            sock.close()  # aiosmtplib has closed its transport; this covers a failed start
        return DeliveryResult(
            outcome="sent", provider=self.name, provider_message_id=email["Message-ID"]
        )

    def _build(self, message: OutboundMessage) -> EmailMessage:
        """The email; the message's own faults (a line break in a header) are permanent."""
        if any(c in message.to for c in "\r\n\0"):
            raise InvalidAddressError("the recipient address contains a line break")
        try:
            return self._compose(message)
        except (ValueError, TypeError) as exc:  # email.policy refuses CR/LF in header values
            raise MessageRejectedError(f"the message cannot be sent as email: {exc}") from None

    def _compose(self, message: OutboundMessage) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.config.sender
        email["To"] = message.to
        email["Subject"] = message.subject or ""
        email["Date"] = formatdate(localtime=False)
        # Derived from the notification id: the same notification always carries the same
        # Message-ID, so a receiver (or a test) can recognise a duplicate.
        domain = self.config.sender.rpartition("@")[2] or "localhost"
        email["Message-ID"] = f"<{message.notification_id}@{domain}>"
        email["X-Notification-Id"] = message.notification_id
        email.set_content(message.text)
        if message.html:
            email.add_alternative(message.html, subtype="html")
        return email
