"""The enrich stage's pure preference rules: toggles, overrides, quiet hours, digests, caps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from streams.state import frequency
from streams.state import preferences as rules


def prefs(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenant_id": "acme",
        "user_id": "ada",
        "opted_out": False,
        "channels": {},
        "categories": {},
        "templates": {},
        "quiet_hours": None,
        "do_not_disturb": False,
        "frequency_caps": [],
    }
    return {**base, **overrides}


def toggle(enabled: bool | None = None, **channels: bool) -> dict[str, Any]:
    return {"enabled": enabled, "channels": channels}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (None, None),
        (prefs(), None),
        (prefs(opted_out=True), "recipient opted out of all notifications"),
        (prefs(do_not_disturb=True), "recipient has do not disturb on"),
        (prefs(channels={"email": False}), "recipient disabled the email channel"),
        (prefs(channels={"sms": False}), None),
        (
            prefs(categories={"marketing": toggle(False)}),
            "recipient disabled marketing notifications",
        ),
        (
            prefs(categories={"marketing": toggle(email=False)}),
            "recipient disabled marketing notifications on email",
        ),
        (prefs(categories={"marketing": toggle(sms=False)}), None),
        (prefs(categories={"alert": toggle(False)}), None),
        (prefs(templates={"promo": toggle(False)}), "recipient disabled template promo"),
        (
            prefs(templates={"promo": toggle(email=False)}),
            "recipient disabled template promo on email",
        ),
        (prefs(templates={"other": toggle(False)}), None),
        # Most specific wins, in both directions.
        (prefs(channels={"email": False}, categories={"marketing": toggle(True)}), None),
        (
            prefs(channels={"email": True}, categories={"marketing": toggle(False)}),
            "recipient disabled marketing notifications",
        ),
        (
            prefs(categories={"marketing": toggle(False, email=True)}),
            None,
        ),
        (prefs(categories={"marketing": toggle(False)}, templates={"promo": toggle(True)}), None),
        (
            prefs(templates={"promo": toggle(True, email=False)}),
            "recipient disabled template promo on email",
        ),
        (
            prefs(categories={"marketing": toggle(True)}, templates={"promo": toggle(None)}),
            None,
        ),
        (
            prefs(channels={"email": False}, templates={"promo": toggle(None, sms=True)}),
            "recipient disabled the email channel",
        ),
        # Opt-out and DND beat every toggle.
        (
            prefs(opted_out=True, templates={"promo": toggle(True)}),
            "recipient opted out of all notifications",
        ),
        (
            prefs(do_not_disturb=True, templates={"promo": toggle(True)}),
            "recipient has do not disturb on",
        ),
    ],
)
def test_suppression_rules_and_their_reasons(
    record: dict[str, Any] | None, expected: str | None
) -> None:
    assert rules.suppression_reason(record, "email", "marketing", "promo") == expected


def test_tenant_defaults_apply_only_without_a_user_record() -> None:
    tenant = {"default_preferences": prefs(channels={"email": False})}
    assert rules.effective_preferences(None, tenant) == tenant["default_preferences"]
    assert rules.effective_preferences(prefs(), tenant) == prefs()
    assert rules.effective_preferences(None, None) is None


@pytest.mark.parametrize(
    ("priority", "template", "expected"),
    [
        ("critical", {"critical_overrides_preferences": True}, True),
        ("critical", {"critical_overrides_preferences": False}, False),
        ("critical", None, False),
        ("high", {"critical_overrides_preferences": True}, False),
    ],
)
def test_critical_override_needs_priority_and_template(
    priority: str, template: dict[str, Any] | None, expected: bool
) -> None:
    assert rules.critical_override({"priority": priority}, template) is expected


def test_category_template_wins_then_request_then_transactional() -> None:
    assert rules.category_of({"category": "marketing"}, {"category": "alert"}) == "alert"
    assert rules.category_of({"category": "marketing"}, None) == "marketing"
    assert rules.category_of({"category": None}, None) == "transactional"


def ms(text: str, tz: str = "UTC") -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


@pytest.mark.parametrize(
    ("start", "end", "tz", "now", "release"),
    [
        # Same-day window.
        ("09:00", "17:00", "UTC", "2026-03-02T12:00", "2026-03-02T17:00"),
        ("09:00", "17:00", "UTC", "2026-03-02T08:59", None),
        ("09:00", "17:00", "UTC", "2026-03-02T17:00", None),
        ("09:00", "17:00", "UTC", "2026-03-02T09:00", "2026-03-02T17:00"),
        # Crossing midnight: before and after midnight.
        ("22:00", "07:00", "UTC", "2026-03-02T23:30", "2026-03-03T07:00"),
        ("22:00", "07:00", "UTC", "2026-03-03T03:00", "2026-03-03T07:00"),
        ("22:00", "07:00", "UTC", "2026-03-03T07:00", None),
        ("22:00", "07:00", "UTC", "2026-03-03T12:00", None),
        # Empty window.
        ("08:00", "08:00", "UTC", "2026-03-03T08:00", None),
    ],
)
def test_quiet_hours_windows(start: str, end: str, tz: str, now: str, release: str | None) -> None:
    quiet = {"start": start, "end": end, "timezone": tz}
    expected = ms(release, tz) if release else None
    assert rules.quiet_hours_release(quiet, ZoneInfo(tz), ms(now, tz)) == expected


def test_quiet_hours_in_a_non_utc_zone_release_at_local_end() -> None:
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Asia/Tokyo"}
    tokyo = ZoneInfo("Asia/Tokyo")
    # 14:00 UTC is 23:00 in Tokyo: quiet until 07:00 Tokyo, which is 22:00 UTC.
    now = ms("2026-03-02T14:00")
    release = rules.quiet_hours_release(quiet, tokyo, now)
    assert release == ms("2026-03-02T22:00")
    assert datetime.fromtimestamp(release / 1000, UTC).astimezone(tokyo).hour == 7
    # 14:00 UTC is not quiet in UTC itself.
    assert rules.quiet_hours_release(quiet, ZoneInfo("UTC"), now) is None
    assert rules.quiet_hours_reason(quiet, tokyo) == (
        "recipient's quiet hours 22:00-07:00 (Asia/Tokyo)"
    )


def test_zone_falls_back_along_the_chain_and_bad_times_are_errors() -> None:
    assert rules.zone(None, "Not/AZone", "Europe/Berlin").key == "Europe/Berlin"
    assert rules.zone(None, None).key == "UTC"
    with pytest.raises(rules.PreferenceError, match="'25h' is not HH:MM"):
        rules.quiet_hours_release({"start": "25h", "end": "07:00"}, ZoneInfo("UTC"), 0)


def test_digest_rule_and_key() -> None:
    own = {"key": "project.id", "template_id": "digest"}
    tenant_rule = {"key": "", "template_id": "daily"}
    tenant = {"digest_rules": {"marketing": tenant_rule}}
    assert rules.digest_rule({"digest": own}, tenant, "marketing") == own
    assert rules.digest_rule({"digest": None}, tenant, "marketing") == tenant_rule
    assert rules.digest_rule(None, tenant, "alert") is None
    notification = {
        "template_id": "comment",
        "channel": "email",
        "data_json": '{"project": {"id": 42}}',
    }
    assert rules.digest_key(notification, own, "marketing") == "comment|email|42"
    assert rules.digest_key(notification, tenant_rule, "marketing") == "comment|email|"
    inline = {**notification, "template_id": None, "data_json": "{}"}
    assert rules.digest_key(inline, own, "marketing") == "marketing|email|"


def test_send_at_reason_names_the_time() -> None:
    assert (
        rules.send_at_reason(ms("2026-03-02T12:30"))
        == "scheduled for 2026-03-02T12:30:00Z (send_at)"
    )


def test_caps_combine_user_and_tenant_without_repeats() -> None:
    cap = {"channel": "email", "category": None, "max_count": 2, "period_seconds": 3600}
    other = {"channel": None, "category": "marketing", "max_count": 5, "period_seconds": 86400}
    tenant = {"default_preferences": prefs(frequency_caps=[cap, other])}
    assert rules.frequency_caps(prefs(frequency_caps=[cap]), tenant) == [cap, other]
    assert rules.frequency_caps(None, None) == []


EMAIL_2_PER_HOUR = {"channel": "email", "category": None, "max_count": 2, "period_seconds": 3600}
MARKETING_1_PER_DAY = {
    "channel": None,
    "category": "marketing",
    "max_count": 1,
    "period_seconds": 86400,
}


def send(
    state: frequency.State | None, nid: str, at: int, category: str = "alert"
) -> tuple[str | None, frequency.State | None]:
    caps = [EMAIL_2_PER_HOUR, MARKETING_1_PER_DAY]
    reason = frequency.exceeded(state, caps, nid, "email", category, at)
    if reason is None:
        state = frequency.record(state, caps, nid, "email", category, at)
    return reason, state


def test_caps_sliding_window() -> None:
    hour = 3600_000
    state: frequency.State | None = None
    reason, state = send(state, "n1", 0)
    assert reason is None
    reason, state = send(state, "n2", 10 * 60_000)
    assert reason is None
    reason, state = send(state, "n3", 20 * 60_000)
    assert reason == "frequency cap reached (email notifications: at most 2 per 3600s)"
    # n1 leaves the window one hour after it was counted; n2 is still in it.
    reason, state = send(state, "n4", hour)
    assert reason is None
    reason, state = send(state, "n5", hour + 60_000)
    assert reason is not None
    assert state is not None and set(state["email/*/2/3600s"]) == {"n2", "n4"}


def test_caps_by_category_and_idempotent_under_replay() -> None:
    reason, state = send(None, "m1", 0, category="marketing")
    assert reason is None
    # The same notification replayed: let through again, counted once.
    reason, replayed = send(state, "m1", 5_000, category="marketing")
    assert reason is None and replayed == state
    assert state is not None and state["*/marketing/1/86400s"] == {"m1": 0}
    reason, _ = send(state, "m2", 6_000, category="marketing")
    assert reason == ("frequency cap reached (marketing notifications: at most 1 per 86400s)")
    # A cap that no longer applies is dropped on the next write.
    pruned = frequency.record(state, [EMAIL_2_PER_HOUR], "x", "email", "alert", 7_000)
    assert set(pruned) == {"email/*/2/3600s"}
