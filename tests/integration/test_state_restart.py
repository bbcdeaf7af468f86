"""A worker killed mid-stream recovers every table from its changelog.

One run exercises the batch table (commands applied, expected total, completion), the
batch-state shards, the frequency-cap table and the idempotency table at once: a batch is
half sent when the worker is SIGKILLed, and after the restart the batch completes exactly
once with exact counts, a cap reached before the kill still holds, and an idempotency key
seen before the kill is still a duplicate. While the worker is down, the `delivered`
changelog is given what a kill between the table write and the inbox produce leaves (an
in-app notification recorded as delivered, no inbox message): the restarted worker must
publish the message. (Schedules and digest windows across a kill are
in test_scheduling.py.)
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.ids import expected_partition, notification_id
from core.lanes import delivery_topic
from streams.batch_client import BatchClient, request_id_for
from tests.integration.test_pipeline import request_record
from tests.support.pipeline import Pipeline, wait_until
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

USERS = 240
CHUNK = 60
CAP = {"channel": "email", "category": None, "max_count": 2, "period_seconds": 3600}


@pytest.fixture(scope="module")
def client(pipeline: Pipeline) -> Iterator[BatchClient]:
    yield BatchClient(pipeline.settings)


def batch_request(user: str) -> dict[str, Any]:
    return {
        "channels": ["email"],
        "recipients": [{"user_id": user, "email": f"{user}@example.test"}],
        "content": {"subject": "Batch {{ n }}", "text": "Item {{ n }}", "html": None},
        "data": {"n": user},
    }


def completed_events(pipeline: Pipeline, batch_id: str) -> list[dict[str, Any]]:
    events = (
        pipeline.codec.decode(message.value(), "BatchEvent")
        for message in pipeline.read_topic("notifications.batch-events", timeout=2)
    )
    return [e for e in events if e["batch_id"] == batch_id and e["event_type"] == "batch.completed"]


def send_to(pipeline: Pipeline, user: str, **extra: Any) -> str:
    record = request_record(user, **extra)
    pipeline.produce_record("notifications.requests", f"acme:{user}", record)
    pipeline.flush()
    return notification_id(record["tenant_id"], record["request_id"], user, "email")


def recorded_as_delivered_without_its_inbox_message(pipeline: Pipeline) -> tuple[Any, str]:
    """An in-app request, and its notification written to the `delivered` changelog as the
    worker writes it, on the partition the worker would: what a kill -9 leaves when the
    broker acknowledged the table write but not the inbox message."""
    record = request_record("inboxed", channels=["in_app"])
    nid = notification_id("acme", record["request_id"], "inboxed", "in_app")
    deliver = pipeline.topics[delivery_topic("in_app", "transactional")]
    partition = expected_partition("acme:inboxed", deliver.partitions)
    changelog = pipeline.topics.changelog("delivered").physical_name
    value = {
        "provider": "in_app",
        "provider_id": "env:in_app",
        "provider_message_id": nid,
        "outcome": "delivered",
        "at": int(time.time() * 1000),
        "partition": partition,
    }
    pipeline.producer.produce(
        changelog, key=json.dumps(nid), value=json.dumps(value), partition=partition
    )
    pipeline.flush()
    return record, nid


def inbox_ids(pipeline: Pipeline) -> set[str]:
    return {
        pipeline.codec.decode(m.value(), "InAppMessage")["notification_id"]
        for m in pipeline.read_topic("notifications.inbox", timeout=2)
    }


def test_batch_caps_and_idempotency_survive_a_kill(
    pipeline: Pipeline, client: BatchClient, smtp: SmtpCapture
) -> None:
    # Before the kill: a cap reached and an idempotency key used.
    pipeline.produce_record(
        "users.preferences",
        "acme:capper",
        {"tenant_id": "acme", "user_id": "capper", "frequency_caps": [CAP]},
    )
    pipeline.flush()
    time.sleep(1)  # the preferences agent reads its topic alongside the requests
    capped_before = [send_to(pipeline, "capper") for _ in range(2)]
    keyed = send_to(pipeline, "keyed", idempotency_key="restart-key")
    pipeline.wait_for_status([*capped_before, keyed], {"sent"})

    # A batch, half sent when the worker is killed.
    users = [f"r{i}" for i in range(USERS)]
    batch_id, token = client.create_batch("acme", total_expected=USERS)
    ids = []
    for start in range(0, USERS, CHUNK):
        chunk = [batch_request(u) for u in users[start : start + CHUNK]]
        command_id = client.append_chunk(batch_id, "acme", token, chunk)
        ids += [
            notification_id(
                "acme",
                request_id_for(batch_id, command_id, i),
                r["recipients"][0]["user_id"],
                "email",
            )
            for i, r in enumerate(chunk)
        ]

    def sent() -> int:
        received = smtp.by_notification_id()
        return sum(1 for nid in ids if nid in received)

    wait_until(lambda: pipeline.assert_alive() or sent() >= 30, 120, "the batch to start sending")
    pipeline.worker.stop(signal.SIGKILL)
    before_kill = sent()
    assert before_kill < USERS, "the batch finished before the kill"
    inbox_request, inbox_id = recorded_as_delivered_without_its_inbox_message(pipeline)
    pipeline.worker.start()
    pipeline.produce_record("notifications.requests", "acme:inboxed", inbox_request)
    pipeline.flush()

    # After the restart: the cap and the idempotency key are remembered.
    capped_after = send_to(pipeline, "capper")
    duplicate = send_to(pipeline, "keyed", idempotency_key="restart-key")
    pipeline.wait_for_status([capped_after], {"suppressed"}, timeout=180)
    [suppressed] = [e for e in pipeline.statuses[capped_after] if e["status"] == "suppressed"]
    assert "frequency cap" in (suppressed["reason"] or "")
    pipeline.wait_for_status([duplicate], {"duplicate"}, timeout=60)
    pipeline.wait_for_status([inbox_id], {"delivered"}, timeout=60)
    wait_until(lambda: inbox_id in inbox_ids(pipeline), 30, "the inbox message the crash had lost")

    # The batch completes exactly once, with exact counts, and nothing is lost.
    pipeline.wait_for_status(ids, {"sent"}, timeout=240)
    wait_until(lambda: completed_events(pipeline, batch_id), 120, "batch.completed", every=1.0)
    time.sleep(3)  # a second completion would follow close behind
    [completed] = completed_events(pipeline, batch_id)
    assert completed["counts"] == {"accepted": USERS, "sent": USERS}
    received = smtp.by_notification_id()
    duplicates = sum(len(received[nid]) - 1 for nid in ids)
    print(f"\nSIGKILL after {before_kill} of {USERS} sent; {duplicates} duplicate emails")
    page = pipeline.worker_json(f"/batches/{batch_id}/")
    assert page["counts"] == {"sent": USERS} and page["completed"] is True
