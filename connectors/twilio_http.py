"""The twilio SDK's async HTTP client interface, implemented over httpx with a configurable origin.

The SDK builds every request itself (absolute `https://api.twilio.com/2010-04-01/...` URLs,
form fields, Basic auth) and parses every answer, errors included; this class only carries the
bytes. It sends through an injected `httpx.AsyncClient` (the deliver stage shares one, so
Twilio needs no aiohttp session of its own) after replacing the origin with the connector's
`base_url`: the real API in production, a local peer in tests.

`base_url` is the one source of truth for where requests go: an edge/region host that the SDK
derives from TWILIO_EDGE / TWILIO_REGION in the environment (api.<edge>.<region>.twilio.com)
is rewritten too, so set a regional `base_url` to use a region.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx
from twilio.http import AsyncHttpClient
from twilio.http.response import Response

TWILIO_API = "https://api.twilio.com"

_log = logging.getLogger(__name__)


def is_twilio_api(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "api.twilio.com" or (host.startswith("api.") and host.endswith(".twilio.com"))


class TwilioHttpxClient(AsyncHttpClient):
    """One per send: it carries that send's extra headers and keeps its last response."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str = TWILIO_API,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(_log, is_async=True, timeout=timeout)
        self._http = http
        self._origin = base_url.rstrip("/")
        self._headers = dict(headers or {})
        # The SDK's exceptions drop the response headers; the connector reads Retry-After here.
        self.last_response: Response | None = None

    def rewrite(self, url: str) -> str:
        if not is_twilio_api(url):
            return url
        split = urlsplit(url)
        return self._origin + split.path + (f"?{split.query}" if split.query else "")

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the SDK's interface
        allow_redirects: bool = False,
    ) -> Response:
        """Send one SDK request; httpx transport errors propagate for the connector to map."""
        answer = await self._http.request(
            method.upper(),
            self.rewrite(url),
            params=params,  # type: ignore[arg-type]  # the SDK passes str/list values
            data=data,
            headers={**(headers or {}), **self._headers},
            auth=auth,
            timeout=timeout or self.timeout,
            follow_redirects=allow_redirects,
        )
        self.last_response = Response(answer.status_code, answer.text, answer.headers)
        return self.last_response
