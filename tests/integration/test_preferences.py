"""Preferences in the enrich stage, on the real broker with a real worker.

Suppression by channel, category and template with the reason a user reads; do-not-disturb;
the critical override; frequency caps; quiet hours and send_at deferrals; tenant defaults.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.ids import notification_id
from tests.integration.conftest import now_ms
from tests.support.pipeline import Pipeline, wait_materialised
from tests.support.requests import request_record
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

CONTENT = {"subject": "Hello {{ name }}", "text": "Hi {{ name }}", "html": None}


def request(tenant: str, user: str, **extra: Any) -> dict[str, Any]:
    return request_record(user, tenant=tenant, **{"content": CONTENT, **extra})


def send(pipeline: Pipeline, tenant: str, user: str, **extra: Any) -> str:
    record = request(tenant, user, **extra)
    pipeline.produce_record("notifications.requests", f"{tenant}:{user}", record)
    return notification_id(record["tenant_id"], record["request_id"], user, "email")


def preferences(tenant: str, user: str, **fields: Any) -> dict[str, Any]:
    return {"tenant_id": tenant, "user_id": user, "updated_at": now_ms(), **fields}


def toggle(enabled: bool | None = None, **channels: bool) -> dict[str, Any]:
    return {"enabled": enabled, "channels": channels}


def template(template_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "tenant_id": "acme",
        "template_id": template_id,
        "version": 1,
        "updated_at": now_ms(),
        "content": CONTENT,
        **fields,
    }


def reasons(pipeline: Pipeline, nid: str, status: str) -> list[str | None]:
    return [e["reason"] for e in pipeline.statuses[nid] if e["status"] == status]


def events(pipeline: Pipeline, nid: str, status: str) -> list[dict[str, Any]]:
    return [e for e in pipeline.statuses[nid] if e["status"] == status]


def test_channel_category_template_toggles_and_dnd_suppress_with_their_reason(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    pipeline.produce_record(
        "notifications.templates", "acme:promo:1", template("promo", category="marketing")
    )
    records = {
        "p-chan": preferences("acme", "p-chan", channels={"email": False}),
        "p-cat": preferences("acme", "p-cat", categories={"marketing": toggle(None, email=False)}),
        "p-catall": preferences("acme", "p-catall", categories={"marketing": toggle(False)}),
        "p-tpl": preferences("acme", "p-tpl", templates={"promo": toggle(False)}),
        "p-tplch": preferences("acme", "p-tplch", templates={"promo": toggle(None, email=False)}),
        "p-dnd": preferences("acme", "p-dnd", do_not_disturb=True),
        # The template re-enables what the channel disables: most specific wins.
        "p-wins": preferences(
            "acme", "p-wins", channels={"email": False}, templates={"promo": toggle(True)}
        ),
    }
    for user, record in records.items():
        pipeline.produce_record("users.preferences", f"acme:{user}", record)
    wait_materialised(pipeline, "users.preferences")
    time.sleep(2)  # the templates view is read in the background

    ids = {
        "p-chan": send(pipeline, "acme", "p-chan"),
        "p-cat": send(pipeline, "acme", "p-cat", category="marketing"),
        "p-catall": send(pipeline, "acme", "p-catall", template_id="promo", content=None),
        "p-tpl": send(pipeline, "acme", "p-tpl", template_id="promo", content=None),
        "p-tplch": send(pipeline, "acme", "p-tplch", template_id="promo", content=None),
        "p-dnd": send(pipeline, "acme", "p-dnd"),
        "p-wins": send(pipeline, "acme", "p-wins", template_id="promo", content=None),
        # A category toggle does not touch another category.
        "p-cat-other": send(pipeline, "acme", "p-cat", category="alert"),
    }
    pipeline.flush()

    pipeline.wait_for_status([ids["p-wins"], ids["p-cat-other"]], {"sent"})
    suppressed = [nid for user, nid in ids.items() if user not in ("p-wins", "p-cat-other")]
    pipeline.wait_for_status(suppressed, {"suppressed"})
    assert {user: reasons(pipeline, ids[user], "suppressed") for user in records} == {
        "p-chan": ["recipient disabled the email channel"],
        "p-cat": ["recipient disabled marketing notifications on email"],
        "p-catall": ["recipient disabled marketing notifications"],
        "p-tpl": ["recipient disabled template promo"],
        "p-tplch": ["recipient disabled template promo on email"],
        "p-dnd": ["recipient has do not disturb on"],
        "p-wins": [],
    }
    sent = smtp.by_notification_id()
    assert all(nid not in sent for nid in suppressed)


def test_critical_override_delivers_despite_dnd_and_opt_out(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    pipeline.produce_record(
        "notifications.templates",
        "acme:breach:1",
        template("breach", category="alert", critical_overrides_preferences=True),
    )
    pipeline.produce_record(
        "notifications.templates", "acme:news:1", template("news", category="alert")
    )
    pipeline.produce_record(
        "users.preferences", "acme:c-user", preferences("acme", "c-user", opted_out=True)
    )
    pipeline.produce_record(
        "users.preferences", "acme:c-dnd", preferences("acme", "c-dnd", do_not_disturb=True)
    )
    wait_materialised(pipeline, "users.preferences")
    time.sleep(2)

    critical = {"template_id": "breach", "content": None, "priority": "critical"}
    overridden = [
        send(pipeline, "acme", "c-user", **critical),
        send(pipeline, "acme", "c-dnd", **critical),
    ]
    # Not critical, or a template that does not allow it: preferences apply.
    high = send(pipeline, "acme", "c-dnd", template_id="breach", content=None, priority="high")
    no_override = send(
        pipeline, "acme", "c-dnd", template_id="news", content=None, priority="critical"
    )
    pipeline.flush()

    pipeline.wait_for_status(overridden, {"sent"})
    pipeline.wait_for_status([high, no_override], {"suppressed"})
    sent = smtp.by_notification_id()
    assert all(len(sent[nid]) == 1 for nid in overridden)
    assert high not in sent and no_override not in sent


def test_a_cap_of_two_per_hour_suppresses_the_third(pipeline: Pipeline, smtp: SmtpCapture) -> None:
    cap = {"channel": "email", "category": None, "max_count": 2, "period_seconds": 3600}
    pipeline.produce_record(
        "users.preferences", "acme:capped", preferences("acme", "capped", frequency_caps=[cap])
    )
    wait_materialised(pipeline, "users.preferences")

    ids = [send(pipeline, "acme", "capped") for _ in range(3)]  # one key: in this order
    pipeline.flush()
    pipeline.wait_for_status(ids[:2], {"sent"})
    pipeline.wait_for_status(ids[2:], {"suppressed"})
    assert reasons(pipeline, ids[2], "suppressed") == [
        "frequency cap reached (email notifications: at most 2 per 3600s)"
    ]
    assert ids[2] not in smtp.by_notification_id()


def test_quiet_hours_covering_now_defer_until_the_window_ends(pipeline: Pipeline) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    quiet = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"), "timezone": "UTC"}
    pipeline.produce_record(
        "users.preferences", "acme:sleepy", preferences("acme", "sleepy", quiet_hours=quiet)
    )
    # A tenant's default preferences apply to users with none of their own.
    pipeline.produce_record(
        "config.tenants",
        "hooli",
        {
            "tenant_id": "hooli",
            "default_preferences": preferences(
                "hooli", "", quiet_hours={**quiet, "timezone": None}
            ),
        },
    )
    wait_materialised(pipeline, "users.preferences")
    time.sleep(2)  # the tenants view is read in the background

    ids = [send(pipeline, "acme", "sleepy"), send(pipeline, "hooli", "anyone")]
    pipeline.flush()
    pipeline.wait_for_status(ids, {"deferred"})
    for nid in ids:
        [deferral] = events(pipeline, nid, "deferred")
        assert deferral["deferred_until"] == int(end.timestamp() * 1000)
        assert (
            deferral["reason"] == f"recipient's quiet hours {quiet['start']}-{quiet['end']} (UTC)"
        )
        assert "sent" not in pipeline.latest(nid)


def test_send_at_in_the_future_defers_until_then(pipeline: Pipeline) -> None:
    send_at = now_ms() + 3_600_000
    nid = send(pipeline, "acme", "later", send_at=send_at)
    pipeline.flush()
    pipeline.wait_for_status([nid], {"deferred"})
    [deferral] = events(pipeline, nid, "deferred")
    assert deferral["deferred_until"] == send_at
    assert deferral["reason"].endswith("(send_at)")


def test_an_opt_out_while_held_for_send_at_is_honoured_at_release(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """Preferences are read again when a held notification is released (it re-enters
    enrich): a user who turns email off during the send_at wait gets nothing (issue 19,
    item 6)."""
    nid = send(pipeline, "acme", "held-optout", send_at=now_ms() + 15_000)
    pipeline.flush()
    pipeline.wait_for_status([nid], {"deferred"})
    pipeline.produce_record(
        "users.preferences",
        "acme:held-optout",
        preferences("acme", "held-optout", channels={"email": False}),
    )
    wait_materialised(pipeline, "users.preferences")
    pipeline.wait_for_status([nid], {"suppressed"}, timeout=60)
    assert [e["status"] for e in pipeline.statuses[nid]][-1] == "suppressed"
    assert reasons(pipeline, nid, "suppressed") == ["recipient disabled the email channel"]
    time.sleep(1)
    assert nid not in smtp.by_notification_id()


def test_disabled_tenant_fails_and_cancelled_batch_is_cancelled(pipeline: Pipeline) -> None:
    pipeline.produce_record("config.tenants", "initech", {"tenant_id": "initech", "enabled": False})
    batch_id = f"b-{uuid.uuid4().hex[:8]}"
    pipeline.produce_record(
        "notifications.batch-events",
        batch_id,
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "cancelled",
            "batch_id": batch_id,
            "tenant_id": "acme",
            "cancelled": True,
            "occurred_at": now_ms(),
        },
    )
    pipeline.flush()
    time.sleep(2)  # both views are read in the background
    disabled = send(pipeline, "initech", "milton")
    cancelled = send(pipeline, "acme", "batched", batch_id=batch_id)
    pipeline.flush()
    pipeline.wait_for_status([disabled], {"failed"})
    pipeline.wait_for_status([cancelled], {"cancelled"})
    assert reasons(pipeline, disabled, "failed") == ["tenant initech is disabled"]
    assert reasons(pipeline, cancelled, "cancelled") == [f"batch {batch_id} was cancelled"]
