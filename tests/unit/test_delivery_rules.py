"""The deliver stage's rules as pure functions: provider order, breakers, token buckets,
backoff, sealing of secrets, channel fallback."""

from __future__ import annotations

from typing import Any

import pytest

from core.rate_limits import MIN_RATE_PER_SEC, RateLimits, TokenBucket, parse_rate
from core.sealing import SealingError, SecretBox, new_key
from streams.delivery.breakers import BreakerPolicy, CircuitBreaker
from streams.delivery.fallback import fallback_notification
from streams.delivery.providers import candidate_ids, foreign_override
from streams.delivery.retry import backoff_seconds, tier_for


def config(
    tenant: str, pid: str, channel: str = "email", priority: int = 0, enabled: bool = True
) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "provider_id": pid,
        "channel": channel,
        "priority": priority,
        "enabled": enabled,
    }


CONFIGS = {
    f"{c['tenant_id']}:{c['provider_id']}": c
    for c in (
        config("acme", "ses", priority=1),
        config("acme", "sendgrid", priority=0),
        config("acme", "old", priority=-1, enabled=False),
        config("acme", "sms", channel="sms"),
        config("globex", "mailgun"),
        config("*", "platform-sendgrid", priority=5),
    )
}
ENV = {"env:smtp": "email", "env:in_app": "in_app"}


@pytest.mark.parametrize(
    ("override", "defaults", "expected"),
    [
        (
            None,
            {"email": "env:smtp"},
            ["acme:sendgrid", "acme:ses", "env:smtp", "*:platform-sendgrid"],
        ),
        (
            "ses",
            {"email": "env:smtp"},
            ["acme:ses", "acme:sendgrid", "env:smtp", "*:platform-sendgrid"],
        ),
        ("platform-sendgrid", {}, ["*:platform-sendgrid", "acme:sendgrid", "acme:ses", "env:smtp"]),
        ("smtp", {}, ["env:smtp", "acme:sendgrid", "acme:ses", "*:platform-sendgrid"]),
        ("old", {}, ["acme:sendgrid", "acme:ses", "*:platform-sendgrid", "env:smtp"]),  # disabled
        ("nonesuch", {}, ["acme:sendgrid", "acme:ses", "*:platform-sendgrid", "env:smtp"]),
    ],
    ids=[
        "tenant-then-env-then-rest",
        "override-first",
        "global-override",
        "env-override",
        "disabled-override-skipped",
        "unknown-override-ignored",
    ],
)
def test_provider_order(
    override: str | None, defaults: dict[str, str], expected: list[str]
) -> None:
    ids = candidate_ids(
        tenant_id="acme",
        channel="email",
        override=override,
        configs=CONFIGS,
        defaults=defaults,
        env_channels=ENV,
    )
    assert ids == expected


@pytest.mark.parametrize("override", ["acme:ses", "acme:sendgrid", "acme:nonesuch", "env:ses"])
def test_another_tenants_providers_are_never_candidates(override: str) -> None:
    ids = candidate_ids(
        tenant_id="globex",
        channel="email",
        override=override,
        configs=CONFIGS,
        defaults={},
        env_channels=ENV,
    )
    # The whole list: acme's configs are not globex's, even named explicitly (HIGH 1).
    assert ids == ["globex:mailgun", "*:platform-sendgrid", "env:smtp"]


@pytest.mark.parametrize(
    ("override", "first"),
    [
        ("globex:mailgun", "globex:mailgun"),
        ("mailgun", "globex:mailgun"),
        ("*:platform-sendgrid", "*:platform-sendgrid"),
        ("env:smtp", "env:smtp"),
    ],
)
def test_own_platform_and_env_overrides_come_first(override: str, first: str) -> None:
    ids = candidate_ids(
        tenant_id="globex",
        channel="email",
        override=override,
        configs=CONFIGS,
        defaults={},
        env_channels=ENV,
    )
    assert ids[0] == first and not any(pid.startswith("acme:") for pid in ids)


def test_a_tenant_named_env_does_not_lend_its_providers_through_env_ids() -> None:
    configs = {**CONFIGS, "env:relay": config("env", "relay")}
    ids = candidate_ids(
        tenant_id="globex",
        channel="email",
        override="env:relay",
        configs=configs,
        defaults={},
        env_channels=ENV,
    )
    assert ids == ["globex:mailgun", "*:platform-sendgrid", "env:smtp"]


@pytest.mark.parametrize(
    ("override", "foreign"),
    [
        ("acme:ses", True),
        ("globex:mailgun", False),
        ("mailgun", False),
        ("*:twilio", False),
        ("env:smtp", False),
        (":ses", True),
    ],
)
def test_foreign_override(override: str, foreign: bool) -> None:
    assert foreign_override(override, "globex") is foreign


def test_breaker_opens_on_error_rate_then_half_opens_for_one_trial() -> None:
    breaker = CircuitBreaker(BreakerPolicy(min_calls=4, failure_rate=0.5, open_seconds=10))
    for failed in (False, True, False, True):
        assert breaker.allow(now=0)
        breaker.record(failed=failed, duration=0.1, now=0)
    assert breaker.state == "open" and not breaker.allow(now=5)
    assert breaker.allow(now=10.5)  # half-open: one trial
    assert not breaker.allow(now=10.6)
    breaker.record(failed=False, duration=0.1, now=10.7)
    assert breaker.state == "closed" and breaker.allow(now=10.8)


def test_breaker_counts_slow_calls_and_ignores_the_messages_own_faults() -> None:
    policy = BreakerPolicy(min_calls=3, failure_rate=0.6, slow_call_seconds=2)
    healthy = CircuitBreaker(policy)
    for _ in range(5):
        healthy.record(failed=True, duration=0.1, counts=False, now=0)  # invalid addresses
    assert healthy.state == "closed"
    slow = CircuitBreaker(policy)
    for _ in range(3):
        slow.record(failed=False, duration=3.0, now=1)  # slow successes
    assert slow.state == "open"


def test_breaker_forgets_calls_outside_its_window() -> None:
    breaker = CircuitBreaker(BreakerPolicy(window_seconds=10, min_calls=3, failure_rate=0.5))
    breaker.record(failed=True, duration=0, now=0)
    breaker.record(failed=True, duration=0, now=1)
    breaker.record(failed=False, duration=0, now=20)
    breaker.record(failed=False, duration=0, now=21)
    breaker.record(failed=True, duration=0, now=22)
    assert breaker.state == "closed"


def test_breaker_rate_is_the_windows_share_of_bad_calls_as_calls_expire() -> None:
    # The bad-call count is kept as calls come and go: check it against a recount.
    breaker = CircuitBreaker(BreakerPolicy(window_seconds=10, min_calls=4, failure_rate=0.5))
    for second in range(30):
        breaker.record(failed=second % 3 == 1, duration=0, now=second)  # 1 bad in 3
        assert breaker.bad_calls == sum(bad for _, bad in breaker.calls)
    assert breaker.state == "closed"
    for second in range(30, 36):
        breaker.record(failed=True, duration=0, now=second)
        assert breaker.bad_calls == sum(bad for _, bad in breaker.calls)
    assert breaker.state == "open"


def test_half_open_failure_opens_again() -> None:
    breaker = CircuitBreaker(BreakerPolicy(min_calls=1, failure_rate=0.5, open_seconds=1))
    breaker.record(failed=True, duration=0, now=0)
    assert breaker.allow(now=2)
    breaker.record(failed=True, duration=0, now=2)
    assert breaker.state == "open" and not breaker.allow(now=2.5)


def test_token_bucket_gives_a_wait_instead_of_sleeping() -> None:
    bucket = TokenBucket(rate=10, burst=2, tokens=2, updated=0)
    assert bucket.take(now=0) == 0 and bucket.take(now=0) == 0
    assert bucket.take(now=0) == pytest.approx(0.1)
    assert bucket.take(now=0.1) == 0


def test_bulk_reserve_leaves_tokens_for_transactional_traffic() -> None:
    limits = RateLimits(burst_seconds=1.0)
    taken = 0
    while limits.take("provider:x", 10, reserve_fraction=0.2, now=0) == 0:
        taken += 1
    assert taken == 8  # 2 of 10 left in reserve
    assert limits.take("provider:x", 10, now=0) == 0  # transactional still gets one


def test_rate_is_shared_by_partition_share() -> None:
    limits = RateLimits(burst_seconds=1.0)
    granted = sum(1 for _ in range(100) if limits.take("tenant:t", 40, share=0.25, now=0) == 0)
    assert granted == 10


def test_a_wait_never_exceeds_the_cap_whatever_the_rate() -> None:
    """rate_per_sec 1e-7 used to park a message ~10^7 s on the long retry tier (issue 21,
    MEDIUM 9); now a wait is at most the backoff maximum the deliver stage passes."""
    limits = RateLimits(burst_seconds=1.0, max_wait_seconds=600.0)
    waits = [limits.take("provider:slow", 1e-7, now=0) for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]  # the burst
    assert all(0 < wait <= 600.0 for wait in waits[2:])


@pytest.mark.parametrize("raw", ["0.0000001", "0", "-1", "nan", "inf", "fast", None, "1e9"])
def test_rates_out_of_bounds_are_refused(raw: object) -> None:
    with pytest.raises(ValueError, match="messages per second"):
        parse_rate(raw)


def test_rates_in_bounds_are_parsed() -> None:
    assert parse_rate("2.5") == 2.5 and parse_rate(MIN_RATE_PER_SEC) == MIN_RATE_PER_SEC


def test_buckets_are_bounded_and_only_refilled_or_oldest_ones_go() -> None:
    """Names come from traffic (every JWT subject): issue 21, LOW. A refilled bucket is
    dropped first (a new one starts full, so nothing changes); a busy one keeps its debt."""
    limits = RateLimits(burst_seconds=1.0, max_buckets=100)
    while limits.take("user:busy", 0.1, now=0) == 0:  # drained; refills in 20 s
        pass
    for i in range(150):
        limits.take(f"user:{i}", 100, now=1 + i * 0.05)  # refilled 0.01 s later
        assert len(limits) <= 100
    assert limits.take("user:busy", 0.1, now=8.6) > 0  # 0.86 tokens: its debt is kept
    # Every bucket busy: the least recently used go, the map still stays bounded.
    crowded = RateLimits(burst_seconds=1.0, max_buckets=10)
    for i in range(50):
        while crowded.take(f"user:{i}", 0.1, now=i) == 0:
            pass
        assert len(crowded) <= 10
    assert crowded.take("user:49", 0.1, now=49) > 0


def test_no_rate_means_unlimited() -> None:
    assert RateLimits().take("provider:x", None) == 0


@pytest.mark.parametrize(
    ("attempt", "low", "high"), [(1, 1.0, 2.0), (2, 2.0, 4.0), (4, 8.0, 16.0), (20, 30.0, 60.0)]
)
def test_backoff_is_exponential_with_jitter_and_capped(
    attempt: int, low: float, high: float
) -> None:
    delays = {backoff_seconds(attempt, base=2.0, cap=60.0) for _ in range(50)}
    assert all(low <= d <= high for d in delays) and len(delays) > 1


def test_backoff_waits_at_least_retry_after() -> None:
    assert backoff_seconds(1, base=0.1, cap=600, retry_after=42) == 42


@pytest.mark.parametrize(
    ("wait", "tier"),
    [
        (0.5, "short"),
        (9.9, "short"),
        (10, "medium"),
        (119, "medium"),
        (180, "long"),
        (599, "long"),
        # Issue 19, item 5: 30-minute waits (the webhook cap) no longer hold 2-minute ones.
        (600, "longest"),
        (1800, "longest"),
    ],
)
def test_retry_tiers(wait: float, tier: str) -> None:
    assert tier_for(wait) == tier


def test_sealed_secrets_open_only_for_their_tenant_and_provider() -> None:
    box = SecretBox.from_settings(new_key(), "k1")
    assert box is not None
    blob = box.seal({"api_key": "SG.secret"}, tenant_id="acme", provider_id="sg")
    assert b"SG.secret" not in blob
    assert box.open(blob, tenant_id="acme", provider_id="sg") == {"api_key": "SG.secret"}
    with pytest.raises(SealingError, match="do not open"):
        box.open(blob, tenant_id="globex", provider_id="sg")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SealingError):
        box.open(tampered, tenant_id="acme", provider_id="sg")


def test_keys_rotate_old_blobs_still_open() -> None:
    old_key, new = new_key(), new_key()
    old_box = SecretBox.from_settings(old_key, "k1")
    assert old_box is not None
    blob = old_box.seal({"token": "t"}, tenant_id="acme", provider_id="p")
    rotated = SecretBox.from_settings(new, "k2", {"k1": old_key})
    assert rotated is not None
    assert rotated.open(blob, tenant_id="acme", provider_id="p") == {"token": "t"}
    assert rotated.seal({"token": "t"}, tenant_id="acme", provider_id="p")[2:4] == b"k2"
    with pytest.raises(SealingError, match="not configured"):
        SecretBox.from_settings(new, "k2").open(blob, tenant_id="acme", provider_id="p")  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["short", "bm90IGJhc2U2NA", "AAAA"])
def test_bad_keys_are_refused_clearly(bad: str) -> None:
    with pytest.raises(SealingError, match="key must be"):
        SecretBox.from_settings(bad, "k1")


def test_fallback_is_a_fresh_notification_on_the_next_channel() -> None:
    original = {
        "notification_id": "n1",
        "channel": "push",
        "fallback_channels": ["push", "sms", "email"],
        "batch_id": "b1",
        "address": "token",
        "rendered": {"text": "x"},
        "attempt": 3,
        "delivery_log": [{"provider_id": "x"}],
        "metadata": {"k": "v"},
        "profile_source": "profile",
    }
    fallback = fallback_notification(original)
    assert fallback is not None
    assert fallback["notification_id"] == "n1~sms" and fallback["channel"] == "sms"
    assert fallback["fallback_channels"] == ["email"]
    assert fallback["address"] is None and fallback["rendered"] is None and fallback["attempt"] == 0
    assert fallback["batch_id"] is None and fallback["delivery_log"] == []
    assert fallback["metadata"] == {"k": "v", "fallback_from": "n1"}
    assert fallback_notification({**original, "fallback_channels": ["push"]}) is None
