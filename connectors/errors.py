"""Errors raised by connectors.

    ConnectorError                      root of everything raised here
    ├── ConfigurationError              a provider's configuration is invalid or incomplete
    ├── UnknownProviderError            a provider name not in the registry (lists valid names)
    └── DeliveryError                   a send did not succeed
        ├── RetryableDeliveryError      transient: timeout, connection, 4xx SMTP, 408, 429, 5xx;
        │                               carries retry_after (seconds) when the peer said so
        └── PermanentDeliveryError      retrying the same request cannot help
            ├── InvalidAddressError     the recipient address or device token is invalid
            │                           (no provider can help; a `device.invalid` event follows)
            ├── MessageRejectedError    the message itself cannot be sent (a header with a line
            │                           break, ...): no provider can help, no breaker counts it
            └── ProviderRejectedError   this provider refused us (401/403: credentials, account):
                                        permanent here, but another provider may succeed

A provider's `send` raises a DeliveryError subclass (wrapping the library's error with
`from exc`) or returns a DeliveryResult; the base class turns either into a DeliveryResult.
`provider_fault` tells the deliver stage whether failing over to the next provider can help.
"""

from __future__ import annotations


class ConnectorError(Exception):
    pass


class ConfigurationError(ConnectorError):
    pass


class UnknownProviderError(ConnectorError, KeyError):
    pass


class DeliveryError(ConnectorError):
    retriable: bool = False
    # The failure is this provider's (outage, credentials), so another provider may succeed.
    provider_fault: bool = False
    address_invalid: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryableDeliveryError(DeliveryError):
    retriable = True
    provider_fault = True


class PermanentDeliveryError(DeliveryError):
    retriable = False


class InvalidAddressError(PermanentDeliveryError):
    address_invalid = True


class MessageRejectedError(PermanentDeliveryError):
    """The message's fault, never the provider's: it must not trip a breaker other tenants share."""


class ProviderRejectedError(PermanentDeliveryError):
    provider_fault = True
