"""The explicit provider registry: provider name -> connector class."""

from __future__ import annotations

from typing import Any

from connectors.base import Connector
from connectors.errors import UnknownProviderError
from connectors.in_app import InAppConnector
from connectors.smtp import SmtpConnector

PROVIDERS: dict[str, type[Connector[Any]]] = {
    SmtpConnector.name: SmtpConnector,
    InAppConnector.name: InAppConnector,
}


def provider_class(name: str) -> type[Connector[Any]]:
    try:
        return PROVIDERS[name]
    except KeyError:
        valid = ", ".join(sorted(PROVIDERS))
        raise UnknownProviderError(f"unknown provider {name!r}; valid: {valid}") from None
