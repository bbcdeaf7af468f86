"""The HTTP user service: a profile source for recipients without a users.profiles record.

GET <url with {tenant_id} and {user_id}> answers 200 with a JSON object holding any of the
UserProfile fields (email, phone, locale, timezone), or 404 when the user is unknown.

The enrich stage must never fail or stall on this service, so the client:
- times out after `timeout` seconds;
- caches answers for `cache_ttl` seconds and unknown users (404) for `miss_ttl` seconds;
- counts consecutive failures (timeouts, connection errors, 5xx, malformed bodies) and, after
  `breaker_failures` of them, opens its circuit: no calls for `breaker_reset` seconds. Then one
  call is let through (half-open): success closes the circuit, failure opens it again.
Every failure returns None; the caller falls back to the request's own recipient data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)

PROFILE_FIELDS = ("email", "phone", "locale", "timezone")
MAX_CACHE_ENTRIES = 100_000


class CircuitBreaker:
    def __init__(self, failures: int, reset_seconds: float, clock: Callable[[], float]) -> None:
        self.threshold = max(1, failures)
        self.reset_seconds = reset_seconds
        self._clock = clock
        self.consecutive_failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self._clock() - self.opened_at >= self.reset_seconds:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        return self.state != "open"

    def success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None

    def failure(self) -> None:
        self.consecutive_failures += 1
        if self.opened_at is not None or self.consecutive_failures >= self.threshold:
            # A failed half-open trial re-opens for another full reset period.
            self.opened_at = self._clock()


class UserServiceClient:
    def __init__(
        self,
        url_template: str,
        *,
        timeout: float,
        cache_ttl: float,
        miss_ttl: float | None = None,
        breaker_failures: int,
        breaker_reset: float,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url_template = url_template
        self.cache_ttl = cache_ttl
        # Unknown users are cached too, but shorter: they may be created any moment.
        self.miss_ttl = cache_ttl / 5 if miss_ttl is None else miss_ttl
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset, clock)
        self._clock = clock
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self.calls = 0  # HTTP requests made (for tests and metrics)

    def url(self, tenant_id: str, user_id: str) -> str:
        return self.url_template.format(
            tenant_id=quote(tenant_id, safe=""), user_id=quote(user_id, safe="")
        )

    async def get(self, tenant_id: str, user_id: str) -> dict[str, Any] | None:
        """The user's profile fields, or None (unknown user, service failing or circuit open)."""
        key = (tenant_id, user_id)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        if not self.breaker.allow():
            return None
        self.calls += 1
        try:
            response = await self._client.get(self.url(tenant_id, user_id))
            if response.status_code == 404:
                self._remember(key, None, self.miss_ttl)
                self.breaker.success()
                return None
            response.raise_for_status()
            profile = _profile(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            self.breaker.failure()
            log.warning(
                "user service: %s for %s:%s (%s consecutive failures, circuit %s)",
                type(exc).__name__,
                tenant_id,
                user_id,
                self.breaker.consecutive_failures,
                self.breaker.state,
            )
            return None
        self.breaker.success()
        self._remember(key, profile, self.cache_ttl)
        return profile

    def _remember(self, key: tuple[str, str], value: dict[str, Any] | None, ttl: float) -> None:
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))  # the oldest insertion
        self._cache.pop(key, None)
        self._cache[key] = (self._clock() + ttl, value)

    async def aclose(self) -> None:
        await self._client.aclose()


def _profile(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError("user service: expected a JSON object")
    return {field: body[field] for field in PROFILE_FIELDS if isinstance(body.get(field), str)}
