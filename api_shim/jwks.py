"""The token issuer's signing keys (JWKS), cached, and fetched at most once per cooldown.

A token names its key by `kid`, and anyone can send a token naming a `kid` the issuer never
had. PyJWKClient refetches the JWKS for every unknown `kid`, before the caller is even known,
let alone rate limited: a flood of such tokens was a flood of requests to the issuer from
every shim process. Here one process asks the issuer at most once per `refetch_seconds`
(successful or not), whatever the tokens say; a key the issuer adds (rotation) is picked up
by the first token naming it after the cooldown. The keys are also refreshed when older than
`max_age_seconds`, and the old ones are kept if that refresh fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import jwt

log = logging.getLogger(__name__)


class UnknownKey(Exception):
    """The JWKS has no key with this id (as of the last fetch)."""


class JwksUnavailable(Exception):
    """No keys at all: the JWKS could not be fetched."""


class JwksCache:
    def __init__(
        self,
        url: str,
        *,
        refetch_seconds: float,
        max_age_seconds: float = 300.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # PyJWKClient only for the HTTP and parsing: its own caches are off, this is the cache.
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, cache_keys=False, timeout=timeout)
        self._refetch_seconds = refetch_seconds
        self._max_age_seconds = max_age_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()  # one fetch at a time; the others wait for its keys
        self.fetches = 0

    def key(self, kid: str) -> jwt.PyJWK:
        """The key `kid`; raises UnknownKey, or JwksUnavailable if no keys could be fetched."""
        found = self._keys.get(kid)
        if found is not None and not self._stale(self._clock()):
            return found
        with self._lock:
            now = self._clock()
            if (kid not in self._keys or self._stale(now)) and self._may_fetch(now):
                self._fetch(now)
            found = self._keys.get(kid)
            if found is None:
                if self._fetched_at is None:
                    raise JwksUnavailable(kid)
                raise UnknownKey(kid)
            return found

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self._max_age_seconds

    def _may_fetch(self, now: float) -> bool:
        return self._tried_at is None or now - self._tried_at >= self._refetch_seconds

    def _fetch(self, now: float) -> None:
        self._tried_at = now
        self.fetches += 1
        try:
            jwk_set = self._client.get_jwk_set()
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError) as exc:  # ValueError: not JSON
            log.warning("fetching the JWKS failed (keeping %d keys): %s", len(self._keys), exc)
            return
        self._keys = {key.key_id: key for key in jwk_set.keys if key.key_id}
        self._fetched_at = now
