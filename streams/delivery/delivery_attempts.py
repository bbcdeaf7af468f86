"""Trying a notification's providers in order: breakers, rate limits, failover.

`try_providers` makes at most one call per candidate provider and stops at the first
success, or at a failure that is the message's fault (another provider would fail the same
way). What each provider answered is recorded as a DeliveryAttempt for the status reason,
the retry topic and, in the end, the dead-letter record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from connectors.base import DeliveryResult, OutboundMessage
from core import tracing
from core.rate_limits import RateLimits
from streams.delivery.breakers import Breakers
from streams.delivery.providers import ProviderConfigError, ProviderPool
from streams.runtime import metrics


@dataclass
class Attempts:
    result: DeliveryResult | None = None  # the last provider answer, if any provider was called
    provider_id: str | None = None  # who gave `result`
    log: list[dict[str, Any]] = field(default_factory=list)
    rate_wait: float | None = None  # seconds until a rate-limited provider has a token
    circuit_open: bool = False

    @property
    def transient(self) -> bool:
        """Worth another attempt later: a transient answer, or providers skipped for now."""
        if self.result is not None:
            return self.result.retriable
        return self.circuit_open or self.rate_wait is not None

    def summary(self) -> str:
        """What each provider answered, for a status reason ("smtp: HTTP 503 …; …")."""
        return "; ".join(f"{a['provider_id']}: {a['reason'] or a['outcome']}" for a in self.log)


def attempt_record(
    provider_id: str,
    provider: str,
    outcome: str,
    attempt: int,
    *,
    reason: str | None = None,
    retriable: bool = False,
    provider_message_id: str | None = None,
    duration: float = 0.0,
) -> dict[str, Any]:
    return {
        "provider_id": provider_id,
        "provider": provider,
        "outcome": outcome,
        "reason": reason,
        "retriable": retriable,
        "provider_message_id": provider_message_id,
        "attempt": attempt,
        "at": int(time.time() * 1000),
        "duration_ms": int(duration * 1000),
    }


async def try_providers(
    provider_ids: list[str],
    message: OutboundMessage,
    *,
    pool: ProviderPool,
    breakers: Breakers,
    limits: RateLimits,
    share: float,
    reserve_fraction: float,
) -> Attempts:
    attempts = Attempts()
    for pid in provider_ids:
        try:
            candidate = pool.candidate(pid)
        except ProviderConfigError as exc:
            attempts.log.append(
                attempt_record(pid, "?", "skipped", message.attempt, reason=str(exc))
            )
            metrics.provider_call(pid, "skipped")
            continue
        name = candidate.connector.name
        wait = limits.take(
            f"provider:{pid}",
            candidate.rate_per_sec,
            share=share,
            reserve_fraction=reserve_fraction,
        )
        if wait > 0:
            attempts.rate_wait = min(wait, attempts.rate_wait or wait)
            metrics.rate_limited("provider", wait, provider=pid)
            continue
        if not breakers[pid].allow():
            attempts.circuit_open = True
            attempts.log.append(
                attempt_record(pid, name, "skipped", message.attempt, reason="circuit open")
            )
            metrics.provider_call(pid, "skipped")
            continue
        started = time.monotonic()
        with tracing.calling(f"send {name}", **{"notifications.provider": pid}):
            result = await candidate.connector.deliver(message)
            if not result.ok:
                tracing.mark_failed(result.reason or result.outcome)
        duration = time.monotonic() - started
        breakers[pid].record(
            failed=not result.ok, duration=duration, counts=result.ok or result.provider_fault
        )
        metrics.provider_call(pid, result.outcome, duration)
        attempts.result, attempts.provider_id = result, pid
        attempts.log.append(
            attempt_record(
                pid,
                name,
                result.outcome,
                message.attempt,
                reason=result.reason,
                retriable=result.retriable,
                provider_message_id=result.provider_message_id,
                duration=duration,
            )
        )
        if result.ok or not result.provider_fault:
            break
    return attempts
