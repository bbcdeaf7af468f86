"""Token buckets per provider credential and per tenant, kept in the deliver stage.

A message over a limit is not slept on (that would hold the partition, and every other
tenant behind it): the deliver stage parks it on a retry topic until the bucket has a token
again, and moves on. The bulk lane leaves a reserve in provider buckets, so a blast cannot
use the tokens a password reset needs.

Buckets are per worker. A limit is shared across workers by the share of the delivery
partitions each one owns, so N workers together stay within the configured rate.

Rates are bounded (`parse_rate`) and so are waits (`max_wait_seconds`): a rate of 1e-7/s
would otherwise park a message for ~10^7 s on the long retry tier, ahead of every tenant's
retries in that partition.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

MIN_RATE_PER_SEC = 0.01  # one message per 100 s
MAX_RATE_PER_SEC = 1_000_000.0


def parse_rate(raw: object) -> float:
    """A configured rate (messages per second) as a float; ValueError saying what is allowed."""
    try:
        rate = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("must be a number of messages per second") from None
    if math.isnan(rate) or not MIN_RATE_PER_SEC <= rate <= MAX_RATE_PER_SEC:
        raise ValueError(
            f"must be between {MIN_RATE_PER_SEC:g} and {MAX_RATE_PER_SEC:g} messages per second"
        )
    return rate


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # capacity
    tokens: float = -1.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, time.monotonic()

    def take(self, *, reserve: float = 0.0, now: float | None = None) -> float:
        """Take one token and return 0.0, or return the seconds until one is available.

        `reserve` tokens are left for others (the transactional lane) by this caller.
        """
        now = time.monotonic() if now is None else now
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens - reserve >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 + reserve - self.tokens) / self.rate


class RateLimits:
    """Buckets by name ("provider:<id>", "tenant:<id>", "user:<sub>"), rebuilt when the rate
    changes. At most `max_buckets` are kept: names come from traffic (every JWT subject, every
    address a bad operator token came from), so when the map is full the buckets that have
    refilled are dropped (a new bucket starts full: nothing changes for them), then, if every
    bucket is busy, the least recently used."""

    def __init__(
        self,
        burst_seconds: float = 1.0,
        max_wait_seconds: float = math.inf,
        max_buckets: int = 100_000,
    ) -> None:
        self.burst_seconds = burst_seconds
        self.max_wait_seconds = max_wait_seconds
        self.max_buckets = max_buckets
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _make_room(self, now: float) -> None:
        def refilled(bucket: TokenBucket) -> bool:
            return bucket.tokens + max(0.0, now - bucket.updated) * bucket.rate >= bucket.burst

        for name in [name for name, bucket in self._buckets.items() if refilled(bucket)]:
            del self._buckets[name]
        # Down to 90%, so a full map of busy buckets is not swept on every new name.
        excess = len(self._buckets) - int(self.max_buckets * 0.9)
        if excess > 0:
            by_age = sorted(self._buckets, key=lambda name: self._buckets[name].updated)
            for name in by_age[:excess]:
                del self._buckets[name]

    def take(
        self,
        name: str,
        rate: float | None,
        *,
        share: float = 1.0,
        reserve_fraction: float = 0.0,
        now: float | None = None,
    ) -> float:
        """0.0 if allowed (a token was taken), else seconds to wait (at most max_wait_seconds).
        No rate: unlimited. A rate below MIN_RATE_PER_SEC (a record from before the check)
        counts as that minimum."""
        if rate is None or rate <= 0:
            return 0.0
        local_rate = max(rate, MIN_RATE_PER_SEC) * max(share, 0.01)
        # At least 2, so a reserve still leaves whole tokens for the bulk lane.
        burst = max(2.0, local_rate * self.burst_seconds)
        bucket = self._buckets.get(name)
        if bucket is None or bucket.rate != local_rate:
            started = time.monotonic() if now is None else now
            if bucket is None and len(self._buckets) >= self.max_buckets:
                self._make_room(started)
            bucket = self._buckets[name] = TokenBucket(local_rate, burst, burst, started)
        return min(bucket.take(reserve=burst * reserve_fraction, now=now), self.max_wait_seconds)

    def peek(self, name: str, *, now: float | None = None) -> float:
        """Seconds until `name` has a token, taking none (0.0: it has one, or no bucket yet)."""
        bucket = self._buckets.get(name)
        if bucket is None:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens = min(bucket.burst, bucket.tokens + max(0.0, now - bucket.updated) * bucket.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / bucket.rate
