"""What the chat connectors share: a base class that keeps credentials out of reasons and logs.

Chat providers put credentials in the request URL (a webhook URL is itself the credential;
Telegram's bot token is a path segment), and URLs travel further than headers do:

- httpx logs every request at INFO as `HTTP Request: POST <full URL> ...`; a filter on the
  `httpx` logger replaces registered secrets in those records before any handler sees them;
- an error body may echo the URL (some proxies' error pages do), so every reason a
  ChatConnector raises is scrubbed of its own secrets;
- httpx exceptions outside the transport errors `HttpConnector.request` maps (decoding, an
  invalid URL) may carry the URL in their message; they become DeliveryErrors naming only
  the exception type, raised `from None` so a logged traceback cannot show it either.
"""

from __future__ import annotations

import logging
import weakref
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import httpx

from connectors.base import DeliveryResult, OutboundMessage
from connectors.egress import Egress
from connectors.errors import DeliveryError, ProviderRejectedError, RetryableDeliveryError
from connectors.http import HttpConfigT, HttpConnector

REDACTED = "<redacted>"
# Shorter strings are not credentials, and replacing them would mangle ordinary text.
_MIN_SECRET_LEN = 8
# Webhook URL parts at least this long (tokens, signatures, keys) are redacted on their own,
# so a message quoting only the path or one query value is covered as well.
_MIN_URL_PART_LEN = 16

# The connectors alive now, not every one ever built: a provider re-configured a thousand times
# leaves one entry, and a dropped connector's secrets go with it.
_live_connectors: weakref.WeakSet[ChatConnector] = weakref.WeakSet()


def _log_secrets() -> tuple[str, ...]:
    return tuple(
        {secret for connector in list(_live_connectors) for secret in connector.secrets_held}
    )


class _RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _log_secrets()
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record: logging reports it; a filter must not raise
        redacted = redact(message, secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


logging.getLogger("httpx").addFilter(_RedactSecrets())


def redact(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a URL is replaced whole before its parts are.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def url_secrets(url: str) -> set[str]:
    """A webhook URL in the forms it may appear in: as given, as httpx prints it, in parts."""
    found = {url}
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return found
    found.add(str(parsed))
    found.update(part for part in parsed.path.split("/") if len(part) >= _MIN_URL_PART_LEN)
    found.update(
        value for _, value in parsed.params.multi_items() if len(value) >= _MIN_URL_PART_LEN
    )
    return found


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when the body is not one (an HTML error page, 'ok')."""
    try:
        value = response.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def fit(text: str, limit: int) -> str:
    """Trim to `limit` characters the way Connector._trimmed does, for composed text."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ChatConnector(HttpConnector[HttpConfigT]):
    """An HTTP chat connector whose secrets never reach a reason string or a log line."""

    channel = "chat"

    def __init__(
        self,
        config: HttpConfigT,
        *,
        http: httpx.AsyncClient | None = None,
        egress: Egress | None = None,
    ) -> None:
        super().__init__(config, http=http, egress=egress)
        self.secrets_held = frozenset(s for s in self.secrets() if len(s) >= _MIN_SECRET_LEN)
        _live_connectors.add(self)

    def secrets(self) -> Iterable[str]:
        """The credential strings of this configuration (tokens, webhook URL forms)."""
        return ()

    @abstractmethod
    async def post(self, message: OutboundMessage) -> DeliveryResult:
        """Send the message; raise DeliveryError subclasses as `Connector.send` documents."""

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        try:
            return await self.post(message)
        except DeliveryError as exc:
            scrubbed = type(exc)(redact(str(exc), self.secrets_held), retry_after=exc.retry_after)
            raise scrubbed from None
        except httpx.InvalidURL:
            raise ProviderRejectedError(f"{self.name}: the configured URL is invalid") from None
        except httpx.HTTPError as exc:
            raise RetryableDeliveryError(f"request failed: {type(exc).__name__}") from None
