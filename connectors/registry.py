"""The explicit provider registry: provider name -> connector class.

Adding a provider touches its own module and one line here.
"""

from __future__ import annotations

from typing import Any

import httpx

from connectors.base import Connector
from connectors.errors import UnknownProviderError
from connectors.in_app import InAppConnector
from connectors.smtp import SmtpConnector

PROVIDERS: dict[str, type[Connector[Any]]] = {
    cls.name: cls
    for cls in (
        SmtpConnector,
        InAppConnector,
    )
}


def provider_class(name: str) -> type[Connector[Any]]:
    try:
        return PROVIDERS[name]
    except KeyError:
        valid = ", ".join(sorted(PROVIDERS))
        raise UnknownProviderError(f"unknown provider {name!r}; valid: {valid}") from None


def build(name: str, values: dict[str, Any], *, http: httpx.AsyncClient) -> Connector[Any]:
    """A connector from its name and raw configuration values (validated by its model).

    Raises UnknownProviderError, or pydantic's ValidationError naming the bad field.
    The in-app connector needs the deliver stage's publisher and is built there.
    """
    cls = provider_class(name)
    config = cls.config_model.model_validate(values)
    return cls(config, http=http)
