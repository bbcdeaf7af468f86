"""A worker killed mid-stream recovers every table from its changelog.

One run exercises the batch table (commands applied, expected total, completion), the
batch-state shards, the frequency-cap table and the idempotency table at once: a batch is
half sent when the worker is SIGKILLed, and after the restart the batch completes exactly
once with exact counts, a cap reached before the kill still holds, and an idempotency key
seen before the kill is still a duplicate. (Schedules and digest windows across a kill are
in test_scheduling.py.)
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.ids import notification_id
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
    pipeline.worker.start()

    # After the restart: the cap and the idempotency key are remembered.
    capped_after = send_to(pipeline, "capper")
    duplicate = send_to(pipeline, "keyed", idempotency_key="restart-key")
    pipeline.wait_for_status([capped_after], {"suppressed"}, timeout=180)
    [suppressed] = [e for e in pipeline.statuses[capped_after] if e["status"] == "suppressed"]
    assert "frequency cap" in (suppressed["reason"] or "")
    pipeline.wait_for_status([duplicate], {"duplicate"}, timeout=60)

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
