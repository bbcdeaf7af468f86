"""The scheduler's pure parts: flush times per mode, digest ids, the digest payload, the index."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.ids import digest_id
from streams.state.digests import (
    digest_notification,
    is_full,
    planned_flush,
    rule_problem,
    window_key,
)
from streams.state.scheduler import FLUSH, RELEASE, DueIndex


def rule(**overrides: Any) -> dict[str, Any]:
    base = {
        "key": "project.id",
        "mode": "fixed",
        "window_seconds": 60,
        "max_window_seconds": 600,
        "max_items": 0,
        "template_id": "digest",
    }
    return {**base, **overrides}


def item(n: int, **overrides: Any) -> dict[str, Any]:
    base = {
        "notification_id": f"n-{n}",
        "request_id": f"r-{n}",
        "tenant_id": "acme",
        "batch_id": None,
        "occurred_at": 1_000 + n,
        "channel": "email",
        "recipient": {"user_id": "ada", "email": "ada@x.test"},
        "template_id": "comment",
        "data_json": json.dumps({"n": n}),
        "priority": "normal",
        "category": "marketing",
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "first", "last", "expected"),
    [
        ({}, 1_000, 50_000, 61_000),  # fixed: first + window, whatever came later
        ({"mode": "inactivity"}, 1_000, 50_000, 110_000),  # latest + window
        ({"mode": "inactivity"}, 1_000, 580_000, 601_000),  # capped at first + max_window
    ],
    ids=["fixed", "inactivity", "inactivity-capped"],
)
def test_planned_flush(overrides: dict[str, Any], first: int, last: int, expected: int) -> None:
    assert planned_flush(rule(**overrides), first, last) == expected


def test_is_full_only_with_a_positive_max_items() -> None:
    assert not is_full(rule(max_items=0), 10_000)
    assert not is_full(rule(max_items=3), 2)
    assert is_full(rule(max_items=3), 3)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "digest_rule: required"),
        (rule(template_id=""), "template_id"),
        (rule(window_seconds=0, max_items=10), "window_seconds: must be positive"),
        (rule(max_items=-1), "max_items: must not be negative"),
        (rule(mode="inactivity", max_window_seconds=0), "max_window_seconds"),
    ],
)
def test_rule_problems_are_named(value: dict[str, Any] | None, problem: str) -> None:
    found = rule_problem(value)
    assert found is not None and problem in found


def test_a_valid_rule_has_no_problem() -> None:
    assert rule_problem(rule()) is None
    assert rule_problem(rule(max_items=10)) is None


def test_window_key_separates_users_channels_and_digest_keys() -> None:
    keys = {
        window_key(item(1), "p1"),
        window_key(item(1), "p2"),
        window_key(item(1, channel="in_app"), "p1"),
        window_key(item(1, recipient={"user_id": "bob"}), "p1"),
        window_key(item(1, tenant_id="globex"), "p1"),
    }
    assert len(keys) == 5
    assert window_key(item(1), "p1") == window_key(item(2), "p1")


def test_digest_ids_are_derived_from_the_window_and_its_start() -> None:
    wkey = window_key(item(1), "p1")
    assert digest_id(wkey, 5) == digest_id(wkey, 5)
    assert digest_id(wkey, 5) != digest_id(wkey, 6)
    assert digest_id(wkey, 5) != digest_id(window_key(item(1), "p2"), 5)


def test_digest_notification_lists_every_item_in_arrival_order() -> None:
    header = {"digest_id": "d-1", "digest_key": "p1", "rule": rule()}
    items = [item(n) for n in (3, 1, 2)]
    digest = digest_notification(header, items, now=9_999)
    assert json.loads(digest["data_json"]) == {
        "items": [{"n": 3}, {"n": 1}, {"n": 2}],
        "count": 3,
        "digest_key": "p1",
    }
    assert digest["notification_id"] == digest["digest_id"] == "d-1"
    assert digest["template_id"] == "digest"
    assert digest["content"] is None and digest["send_at"] is None
    assert (digest["tenant_id"], digest["channel"], digest["category"]) == (
        "acme",
        "email",
        "marketing",
    )
    assert digest["recipient"] == items[0]["recipient"]


def test_an_item_whose_data_is_not_json_does_not_block_its_digest() -> None:
    header = {"digest_id": "d-1", "digest_key": "", "rule": rule()}
    digest = digest_notification(header, [item(1, data_json="{oops")], now=1)
    assert json.loads(digest["data_json"])["items"] == [{"data_json": "{oops"}]


def test_digest_notification_of_an_empty_window_is_an_error() -> None:
    with pytest.raises(ValueError, match="no items"):
        digest_notification({"digest_id": "d-1", "digest_key": "", "rule": rule()}, [], 1)


def test_due_index_pops_only_what_is_due_per_partition() -> None:
    index = DueIndex()
    index.push(0, 300, RELEASE, "c")
    index.push(0, 100, RELEASE, "a")
    index.push(0, 200, FLUSH, "b")
    index.push(1, 50, RELEASE, "other")
    assert index.pop_due(0, 199) == [(100, RELEASE, "a")]
    assert index.pop_due(0, 1_000) == [(200, FLUSH, "b"), (300, RELEASE, "c")]
    assert index.pop_due(0, 10_000) == []
    assert index.pop_due(1, 50) == [(50, RELEASE, "other")]


def test_due_index_is_rebuilt_after_invalidation() -> None:
    index = DueIndex()
    index.mark_built(0)
    index.push(0, 1, RELEASE, "a")
    index.invalidate()
    assert not index.is_built(0)
    assert index.pop_due(0, 10) == []
