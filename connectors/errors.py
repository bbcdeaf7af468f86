"""Errors raised by connectors.

    ConnectorError                      root of everything raised here
    ├── ConfigurationError              a provider's configuration is invalid or incomplete
    ├── UnknownProviderError            a provider name not in the registry (lists valid names)
    └── DeliveryError                   a send did not succeed
        ├── RetryableDeliveryError      transient: timeout, connection, 4xx SMTP, 429, 5xx;
        │                               carries retry_after (seconds) when the peer said so
        └── PermanentDeliveryError      retrying cannot help: bad address, 5xx SMTP, 4xx HTTP

A provider's `send` raises a DeliveryError subclass (wrapping the library's error with
`from exc`) or returns a DeliveryResult; the base class turns either into a DeliveryResult.
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

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryableDeliveryError(DeliveryError):
    retriable = True


class PermanentDeliveryError(DeliveryError):
    retriable = False
