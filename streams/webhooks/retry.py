"""Retries of outgoing status webhooks, on the retry-topic pattern of streams/delivery/retry.py.

deliver -> webhooks.retry.<tier> -> (at not_before) -> webhooks.outgoing

A failed attempt is never waited for in the delivery agent: the job is parked on the tier
whose span holds its wait (short < 10 s, medium < 2 min, long < 10 min, longest), with the
same exponential backoff and jitter as notifications
(`streams.delivery.retry.backoff_seconds`, at least the receiver's Retry-After). Each tier's
agent waits for the head of each partition, then sends it back to webhooks.outgoing: within
a tier waits are of the same order, so a job is held behind another by about the tier's span
at most, and never behind fresh deliveries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faust.types import EventT

from streams.delivery.retry import (
    TIERS,
    backoff_seconds,
    hand_over,
    register_release_agent,
    tier_for,
    until_due,
)
from streams.runtime import metrics
from streams.runtime.app import topics
from streams.runtime.events import decode_or_dead_letter, outgoing_headers
from streams.webhooks.rules import Answer, Outcome

STAGE = "webhook-retry"


@dataclass(frozen=True)
class Next:
    """What follows an attempt: its outcome in the log and, for a retry, the parked job."""

    outcome: Outcome
    retry: dict[str, Any] | None = None
    wait_seconds: float = 0.0

    @property
    def retry_topic(self) -> str:
        return f"webhooks.retry.{tier_for(self.wait_seconds)}"


def next_step(
    job: dict[str, Any],
    answer: Answer,
    *,
    now_ms: int,
    max_attempts: int,
    base_seconds: float,
    cap_seconds: float,
) -> Next:
    """Delivered; failed (a permanent answer, or the last attempt); or retried after a
    backoff of base * 2^(attempt-1) seconds, jittered down to half, at least Retry-After,
    at most the cap."""
    if answer.verdict == "delivered":
        return Next("delivered")
    if answer.verdict == "permanent" or job["attempt"] >= max_attempts:
        return Next("failed")
    wait = backoff_seconds(
        job["attempt"], base=base_seconds, cap=cap_seconds, retry_after=answer.retry_after
    )
    retry = {**job, "attempt": job["attempt"] + 1, "not_before": now_ms + int(wait * 1000)}
    return Next("retrying", retry, wait)


async def release(event: EventT, source: str) -> None:
    job = await decode_or_dead_letter(event, "WebhookDelivery", STAGE)
    if job is None:
        return
    if not await until_due(job):
        await hand_over(source, event, job, STAGE)
        return
    await topics.sink("webhooks.outgoing").send(
        key=event.key, value=job, headers=outgoing_headers(event)
    )
    metrics.processed(STAGE, "released")


def register_release_agents() -> None:
    for tier, _span in TIERS:
        register_release_agent(f"webhooks.retry.{tier}", f"webhook-retry-{tier}", STAGE, release)
