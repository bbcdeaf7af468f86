"""Batch rules: token check, command rejection, counting, completion, shard counters."""

from __future__ import annotations

from typing import Any

import pytest

from core.lifecycle import rank
from streams.batch_client import build_command, chunks, read_jsonl, request_id_for, token_sha256
from streams.state.batches import (
    apply_member,
    chunk_rejection,
    command_rejection,
    expected_total,
    forwarded_requests,
    is_complete,
    notification_count,
    shard_totals,
    token_matches,
)

TOKEN = "s3cret-token"


def batch(**overrides: Any) -> dict[str, Any]:
    base = {
        "tenant_id": "acme",
        "token_sha256": token_sha256(TOKEN),
        "total_expected": None,
        "appended": 0,
        "state": "open",
        "completed": False,
    }
    return {**base, **overrides}


def request(users: list[str], channels: list[str], tenant: str = "acme") -> dict[str, Any]:
    return {
        "request_id": None,
        "tenant_id": tenant,
        "occurred_at": 1,
        "channels": channels,
        "recipients": [{"user_id": u, "email": f"{u}@x.test"} for u in users],
        "data_json": "{}",
    }


def test_token_is_compared_by_hash() -> None:
    assert token_matches(token_sha256(TOKEN), token_sha256(TOKEN))
    assert not token_matches(token_sha256(TOKEN), token_sha256("guess"))
    assert token_sha256(TOKEN) != TOKEN and len(token_sha256(TOKEN)) == 64


@pytest.mark.parametrize(
    ("stored", "kind", "tenant", "token", "reason"),
    [
        (None, "append", "acme", TOKEN, "unknown batch b1"),
        (batch(), "append", "globex", TOKEN, "wrong tenant"),
        (batch(), "append", "acme", "wrong", "bad token"),
        (batch(state="closed"), "append", "acme", TOKEN, "batch is closed"),
        (batch(state="closed"), "close", "acme", TOKEN, "batch is closed"),
        (batch(state="cancelled"), "append", "acme", TOKEN, "batch is cancelled"),
        (batch(state="cancelled"), "cancel", "acme", TOKEN, "batch is cancelled"),
        (batch(state="closed"), "cancel", "acme", TOKEN, None),
        (batch(), "append", "acme", TOKEN, None),
    ],
)
def test_command_rejection(
    stored: dict[str, Any] | None, kind: str, tenant: str, token: str, reason: str | None
) -> None:
    command = build_command(kind, "b1", tenant, token)
    got = command_rejection(stored, command)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason)


def test_chunk_of_another_tenant_is_rejected() -> None:
    requests = [request(["a"], ["email"]), request(["b"], ["email"], tenant="globex")]
    assert chunk_rejection(batch(), requests) == (
        "requests[1].tenant_id: 'globex' is not the batch's"
    )
    assert chunk_rejection(batch(), requests[:1]) is None


def test_forwarded_requests_carry_the_batch_and_derived_ids() -> None:
    command = build_command(
        "append", "b1", "acme", TOKEN, command_id="c1", requests=[request(["a"], ["email"])] * 2
    )
    forwarded = forwarded_requests("b1", command)
    assert [r["request_id"] for r in forwarded] == [
        request_id_for("b1", "c1", 0),
        request_id_for("b1", "c1", 1),
    ]
    assert {r["batch_id"] for r in forwarded} == {"b1"}
    assert forwarded == forwarded_requests("b1", command)  # a replay forwards the same ids


def test_notification_count_is_distinct_recipient_x_channel() -> None:
    requests = [
        {**request(["a", "b", "a"], ["email", "in_app", "email"]), "request_id": "r1"},
        {**request(["c"], ["email"]), "request_id": "r2"},
    ]
    assert notification_count(requests) == 2 * 2 + 1


def test_expected_total_is_declared_or_fixed_at_close() -> None:
    assert expected_total(None) is None
    assert expected_total(batch(total_expected=7, appended=3)) == 7
    assert expected_total(batch(appended=3)) is None  # open, nothing declared: unknown
    assert expected_total(batch(state="closed", appended=3, closed_with=3)) == 3
    assert expected_total(batch(state="cancelled", appended=2, closed_with=2)) == 2


@pytest.mark.parametrize(
    ("stored", "final", "complete"),
    [
        (batch(total_expected=3), 2, False),
        (batch(total_expected=3), 3, True),
        (batch(total_expected=3, completed=True), 3, False),  # never twice
        (batch(appended=3), 3, False),  # open and undeclared: more may come
        (batch(state="closed", appended=3, closed_with=3), 3, True),
        (batch(total_expected=0), 0, True),
        (None, 5, False),
    ],
)
def test_completion_rule(stored: dict[str, Any] | None, final: int, complete: bool) -> None:
    assert is_complete(stored, final) is complete


def test_shard_counters_follow_the_highest_ranked_status() -> None:
    shard = None
    for nid, status in [
        ("n1", "accepted"),
        ("n2", "accepted"),
        ("n1", "sent"),
        ("n2", "deferred"),
        ("n2", "cancelled"),
    ]:
        shard = apply_member(shard, nid, status, rank(status)) or shard
    assert shard is not None
    assert shard_totals(shard) == ({"sent": 1, "cancelled": 1}, 2)
    # A late, lower-ranked event changes nothing.
    assert apply_member(shard, "n1", "rendered", rank("rendered")) is None


def test_shards_written_before_the_counters_are_counted_from_members() -> None:
    legacy = {"members": {"n1": ["sent", 50], "n2": ["queued", 40]}}
    assert shard_totals(legacy) == ({"sent": 1, "queued": 1}, 1)
    updated = apply_member(legacy, "n2", "failed", rank("failed"))
    assert updated is not None and shard_totals(updated) == ({"sent": 1, "failed": 1}, 2)


def test_cli_reads_json_lines_in_chunks() -> None:
    lines = ['{"a": 1}', "", '{"a": 2}', '{"a": 3}']
    assert list(chunks(read_jsonl(lines), 2)) == [[{"a": 1}, {"a": 2}], [{"a": 3}]]
    with pytest.raises(ValueError, match="line 2: expected a JSON object"):
        list(read_jsonl(['{"a": 1}', "[1]"]))


def test_commands_never_carry_the_token() -> None:
    command = build_command("create", "b1", "acme", TOKEN, total_expected=4)
    assert TOKEN not in repr(command)
    assert command["token_sha256"] == token_sha256(TOKEN)
