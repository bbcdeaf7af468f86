"""Provider receipts become status events: a SendGrid Event Webhook payload, parsed by the
SendGrid connector's `parse_receipts`, produced to notifications.receipts, turns a `sent`
email into `delivered`, then `bounced`; a repeated event changes nothing; a receipt for an
unknown notification or another tenant's is dead-lettered."""

from __future__ import annotations

import time
from typing import Any

import pytest

from connectors.receipts import receipt_record
from connectors.sendgrid import parse_receipts
from core.ids import notification_id
from tests.support.pipeline import Pipeline, wait_until
from tests.support.requests import request_record

pytestmark = pytest.mark.integration


def sendgrid_event(nid: str, event: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "email": "ada@example.test",
        "timestamp": int(time.time()),
        "event": event,
        "sg_event_id": event_id,
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "notification_id": nid,
        "tenant_id": "acme",
        **extra,
    }


def publish(pipeline: Pipeline, events: list[dict[str, Any]]) -> None:
    for receipt in parse_receipts(events):
        record = receipt_record(receipt)
        pipeline.produce_record("notifications.receipts", str(record["notification_id"]), record)
    pipeline.flush()


def test_receipts_update_the_status_once_each(pipeline: Pipeline) -> None:
    record = request_record("ada")
    pipeline.produce_record("notifications.requests", "acme:ada", record)
    pipeline.flush()
    nid = notification_id(record["tenant_id"], record["request_id"], "ada", "email")
    pipeline.wait_for_status([nid], {"sent"})

    delivered = sendgrid_event(nid, "delivered", "evt-1")
    publish(pipeline, [delivered, delivered])  # a provider retrying its webhook
    pipeline.wait_for_status([nid], {"delivered"})
    bounce = sendgrid_event(nid, "bounce", "evt-2", type="bounce", reason="550 mailbox gone")
    publish(pipeline, [bounce])
    pipeline.wait_for_status([nid], {"bounced"})

    time.sleep(2)  # a second `delivered` would follow close behind
    pipeline.poll_statuses()
    by_status = [e for e in pipeline.statuses[nid] if e["stage"] == "receipt"]
    assert [e["status"] for e in by_status] == ["delivered", "bounced"]
    assert (
        by_status[0]["provider"] == "sendgrid"
        and by_status[0]["request_id"] == record["request_id"]
    )
    assert "550 mailbox gone" in (by_status[1]["reason"] or "")


def test_receipts_for_unknown_or_foreign_notifications_are_dead_lettered(
    pipeline: Pipeline,
) -> None:
    record = request_record("bob", tenant="globex")
    pipeline.produce_record("notifications.requests", "globex:bob", record)
    pipeline.flush()
    foreign = notification_id(record["tenant_id"], record["request_id"], "bob", "email")
    pipeline.wait_for_status([foreign], {"sent"})
    publish(
        pipeline,
        [
            sendgrid_event("no-such-notification", "delivered", "evt-3"),
            sendgrid_event(foreign, "delivered", "evt-4"),  # says tenant acme
        ],
    )

    def dead() -> list[str]:
        records = [
            pipeline.codec.decode(m.value(), "DeadLetter")
            for m in pipeline.read_topic("notifications.dead-letter")
        ]
        return [r["error"] for r in records if r["stage"] == "receipt"]

    errors = wait_until(lambda: len(dead()) >= 2 and dead(), 60, "two dead-lettered receipts")
    assert any("no notification" in e for e in errors)
    assert any("not tenant 'acme'" in e for e in errors)
    pipeline.poll_statuses()
    assert "delivered" not in pipeline.latest(foreign)


def test_one_tenants_event_id_does_not_pre_empt_anothers_receipt(pipeline: Pipeline) -> None:
    """Dedup is per notification: a tenant replaying another tenant's provider event id on its
    own notification (possible with its own provider account) must not swallow the real one."""
    mine = request_record("carol", tenant="acme")
    theirs = request_record("dave", tenant="globex")
    pipeline.produce_record("notifications.requests", "acme:carol", mine)
    pipeline.produce_record("notifications.requests", "globex:dave", theirs)
    pipeline.flush()
    mine_id = notification_id(mine["tenant_id"], mine["request_id"], "carol", "email")
    theirs_id = notification_id(theirs["tenant_id"], theirs["request_id"], "dave", "email")
    pipeline.wait_for_status([mine_id, theirs_id], {"sent"})

    publish(pipeline, [sendgrid_event(mine_id, "delivered", "evt-shared")])
    pipeline.wait_for_status([mine_id], {"delivered"})
    publish(pipeline, [sendgrid_event(theirs_id, "delivered", "evt-shared", tenant_id="globex")])
    pipeline.wait_for_status([theirs_id], {"delivered"})
