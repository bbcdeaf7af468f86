"""Circuit breakers per provider credential, driven by recent error rate and latency.

Each breaker keeps the calls of the last `window_seconds`. It opens when at least
`min_calls` were made and the share of bad calls (provider-fault failures, or calls slower
than `slow_call_seconds`) reaches `failure_rate`. Open, it refuses calls for `open_seconds`,
then lets one trial call through (half-open): success closes it, failure opens it again.
Failures that are the message's fault (an invalid address) say nothing about the provider
and are not counted.

Breakers live in each worker's memory: they describe what this worker sees right now, and a
restarted worker relearns within a window. The deliver stage fails over past an open breaker.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerPolicy:
    window_seconds: float = 60.0
    min_calls: int = 5
    failure_rate: float = 0.5
    slow_call_seconds: float = 5.0
    open_seconds: float = 30.0


@dataclass
class CircuitBreaker:
    policy: BreakerPolicy
    state: State = "closed"
    opened_at: float = 0.0
    # (time, bad) per call in the window
    calls: deque[tuple[float, bool]] = field(default_factory=deque)
    # How many of `calls` are bad, kept as calls come and expire: every record() checks the
    # rate, and a busy provider's window holds thousands of calls.
    bad_calls: int = 0
    trial_in_flight: bool = False

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.state == "open" and now - self.opened_at >= self.policy.open_seconds:
            self.state, self.trial_in_flight = "half_open", False
        if self.state == "open":
            return False
        if self.state == "half_open":
            if self.trial_in_flight:
                return False
            self.trial_in_flight = True
        return True

    def record(
        self, *, failed: bool, duration: float, counts: bool = True, now: float | None = None
    ) -> None:
        """Record one call. `counts=False` for failures that are not the provider's fault."""
        now = time.monotonic() if now is None else now
        bad = counts and (failed or duration >= self.policy.slow_call_seconds)
        if self.state == "half_open":
            self.trial_in_flight = False
            if bad:
                self._open(now)
            else:
                self.state = "closed"
                self.calls.clear()
                self.bad_calls = 0
            return
        self.calls.append((now, bad))
        self.bad_calls += bad
        self._expire(now)
        if self.state == "closed" and self._tripped():
            self._open(now)

    def _tripped(self) -> bool:
        total = len(self.calls)
        if total < self.policy.min_calls:
            return False
        return self.bad_calls / total >= self.policy.failure_rate

    def _expire(self, now: float) -> None:
        horizon = now - self.policy.window_seconds
        while self.calls and self.calls[0][0] < horizon:
            self.bad_calls -= self.calls.popleft()[1]

    def _open(self, now: float) -> None:
        self.state, self.opened_at = "open", now
        self.calls.clear()
        self.bad_calls = 0


class Breakers:
    """One breaker per provider credential id, created on first use."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, provider_id: str) -> CircuitBreaker:
        breaker = self._breakers.get(provider_id)
        if breaker is None:
            breaker = self._breakers[provider_id] = CircuitBreaker(self.policy)
        return breaker

    def states(self) -> dict[str, State]:
        return {pid: breaker.state for pid, breaker in self._breakers.items()}
