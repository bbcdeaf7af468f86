"""What every HTTP provider shares: a client, error mapping, Retry-After.

HTTP status to error, the same for every provider unless its module says otherwise:

    2xx                  success
    408, 425, 429, 5xx   RetryableDeliveryError (429/503 carry Retry-After when given)
    401, 403             ProviderRejectedError: our credentials or account; another may work
    other 4xx            PermanentDeliveryError: the request itself is wrong (address, content)
    timeout, connection  RetryableDeliveryError

Connectors take an injected `httpx.AsyncClient` (the deliver stage shares one); without one
they create and close their own. Either way it is a guarded client (`egress.guarded_client`):
every connection is resolved once, checked as public and made to the checked address, so a
tenant's `base_url`, `token_uri` or webhook URL cannot reach our network (docs/security.md).

A response body from a non-public peer (possible only with `allow_private`) is never quoted
in a reason: reasons are tenant-readable, and quoting would make an SSRF readable.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from connectors.base import Connector, ProviderConfig
from connectors.egress import Egress, guarded_client, is_guarded, peer_is_public
from connectors.errors import (
    ConfigurationError,
    PermanentDeliveryError,
    ProviderRejectedError,
    RetryableDeliveryError,
)

RETRYABLE_STATUS = frozenset({408, 425, 429})
# Enough for a provider's error message; reasons are tenant-readable, so no more than that.
EXCERPT_LEN = 200
WITHHELD = "(body withheld: non-public peer)"


class HttpProviderConfig(ProviderConfig):
    # The provider's API root. Each provider sets its real default; tests point it at a
    # local peer that speaks the same wire format.
    base_url: str


HttpConfigT = TypeVar("HttpConfigT", bound=HttpProviderConfig)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def excerpt(response: httpx.Response) -> str:
    """The start of the body for a reason, unless it came from a non-public address."""
    if not peer_is_public(response):
        return WITHHELD
    text = response.text.strip().replace("\n", " ")
    return text[:EXCERPT_LEN] + ("…" if len(text) > EXCERPT_LEN else "")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object, or {} when it is not one (an HTML error page…)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def transport_failure(exc: httpx.HTTPError, timeout_seconds: float) -> RetryableDeliveryError:
    """A timeout or connection failure as the retriable error every connector raises."""
    if isinstance(exc, httpx.TimeoutException):
        return RetryableDeliveryError(f"timed out after {timeout_seconds}s ({type(exc).__name__})")
    return RetryableDeliveryError(f"connection failed: {type(exc).__name__}")


def raise_for_status(response: httpx.Response, *, what: str = "", body: bool = True) -> None:
    """Raise the DeliveryError the status code means (see the module docstring); the reason
    quotes the start of the body unless `body` is false."""
    code = response.status_code
    if 200 <= code < 300:
        return
    message = f"HTTP {code}{f' {what}' if what else ''}"
    if body:
        message += f": {excerpt(response)}"
    if code in RETRYABLE_STATUS or code >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RetryableDeliveryError(message, retry_after=retry_after)
    if code in (401, 403):
        raise ProviderRejectedError(message)
    raise PermanentDeliveryError(message)


class HttpConnector(Connector[HttpConfigT]):
    """A connector that talks HTTP through httpx."""

    def __init__(
        self,
        config: HttpConfigT,
        *,
        http: httpx.AsyncClient | None = None,
        egress: Egress | None = None,
    ) -> None:
        super().__init__(config, http=http, egress=egress)
        if http is not None and not is_guarded(http):
            # An unguarded client would connect wherever a tenant's URL points.
            raise ConfigurationError("the HTTP client must be an egress.guarded_client")
        self._http = http or guarded_client(self.egress)
        self._owns_http = http is None

    def url(self, path: str) -> str:
        return f"{self.config.base_url.rstrip('/')}/{path.lstrip('/')}"

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request; transport failures become RetryableDeliveryError."""
        try:
            return await self._http.request(
                method, url, timeout=self.config.timeout_seconds, **kwargs
            )
        except httpx.TransportError as exc:  # timeouts included
            raise transport_failure(exc, self.config.timeout_seconds) from exc

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()
