"""Prometheus metrics for the stages (exposed when METRICS_PORT is set)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PROCESSED = Counter(
    "notifications_stage_messages_total",
    "Messages a stage finished processing, by outcome.",
    ["stage", "outcome"],
)
STATUS = Counter("notifications_status_events_total", "Status events emitted.", ["stage", "status"])
DEAD_LETTERS = Counter(
    "notifications_dead_letters_total",
    "Messages sent to the dead-letter topic.",
    ["stage", "error_type"],
)
LATENCY = Histogram(
    "notifications_stage_latency_seconds",
    "Time from the request's occurred_at to the end of each stage.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def processed(stage: str, outcome: str, occurred_at_ms: int | None = None) -> None:
    PROCESSED.labels(stage, outcome).inc()
    if occurred_at_ms is not None:
        LATENCY.labels(stage).observe(max(0.0, time.time() - occurred_at_ms / 1000))


def status_emitted(stage: str, status: str) -> None:
    STATUS.labels(stage, status).inc()


def dead_lettered(stage: str, error_type: str) -> None:
    DEAD_LETTERS.labels(stage, error_type).inc()


PROVIDER_CALLS = Counter(
    "notifications_provider_calls_total",
    "Calls to providers, by provider id and outcome (sent, delivered, failed, skipped).",
    ["provider", "outcome"],
)
PROVIDER_LATENCY = Histogram(
    "notifications_provider_call_seconds",
    "Provider call duration.",
    ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def provider_call(provider_id: str, outcome: str, seconds: float | None = None) -> None:
    PROVIDER_CALLS.labels(provider_id, outcome).inc()
    if seconds is not None:
        PROVIDER_LATENCY.labels(provider_id).observe(seconds)


HANDLER_SECONDS = Histogram(
    "notifications_stage_handler_seconds",
    "Time a stage spent on one message (decode, rules, provider call, produce).",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RETRIES = Counter(
    "notifications_retries_total",
    "Notifications parked on a retry tier, by tier.",
    ["tier"],
)


RATE_LIMIT_WAITS = Counter(
    "notifications_rate_limit_waits_total",
    "Times a rate limit held a notification back: scope tenant (provider ''), or a "
    "provider's own limit (the next provider is tried; parked when none is left).",
    ["scope", "provider"],
)
RATE_LIMIT_WAIT_SECONDS = Histogram(
    "notifications_rate_limit_wait_seconds",
    "The wait a rate limit gave: until its bucket has a token again.",
    ["scope"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def rate_limited(scope: str, wait_seconds: float, provider: str = "") -> None:
    RATE_LIMIT_WAITS.labels(scope, provider).inc()
    RATE_LIMIT_WAIT_SECONDS.labels(scope).observe(wait_seconds)


def handled(stage: str, seconds: float) -> None:
    HANDLER_SECONDS.labels(stage).observe(seconds)


def retried(tier: str) -> None:
    RETRIES.labels(tier).inc()


BREAKER_METRIC = "notifications_breaker_state"


class BreakerStates(Collector):
    """`notifications_breaker_state{provider,state}`: 1 for each breaker's current state."""

    def __init__(self, states: Callable[[], Mapping[str, str]]) -> None:
        self._states = states

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for provider, current in sorted(self._states().items()):
            for state in ("closed", "half_open", "open"):
                family.add_metric([provider, state], 1.0 if state == current else 0.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            BREAKER_METRIC,
            "Circuit breaker state per provider credential (1 = current).",
            labels=["provider", "state"],
        )


def watch_breakers(states: Callable[[], Mapping[str, str]]) -> None:
    REGISTRY.register(BreakerStates(states))
