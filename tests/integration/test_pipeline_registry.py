"""The whole pipeline in Confluent framing against a real schema registry (Apicurio)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.ids import notification_id
from schemas import SchemaCatalog, build_codec
from tests.integration.test_pipeline import HEADERS, request_record, shim_body
from tests.support.pipeline import Pipeline, wait_until
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry_pipeline(
    kafka_bootstrap: str, fresh_database: str, smtp: SmtpCapture, log_dir: Path
) -> Iterator[Pipeline]:
    url = os.environ.get("TEST_SCHEMA_REGISTRY_URL")
    if not url:
        pytest.fail("TEST_SCHEMA_REGISTRY_URL is not set: run the suite with `make test`")
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        schema_registry_url=url,
    )
    pipe.start(shim=True)
    try:
        yield pipe
    finally:
        pipe.stop()


def test_registry_framed_events_flow_end_to_end(
    registry_pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    pipe = registry_pipeline
    ids = []
    with httpx.Client(base_url=pipe.shim_url, headers=HEADERS, timeout=30) as client:
        for i in range(10):
            response = client.post("/api/v1/notifications", json=shim_body(f"reg{i}"))
            assert response.status_code == 202, response.text
            ids.append(response.json()["notifications"][0]["notification_id"])
    for i in range(10):
        record = request_record(f"regup{i}")
        pipe.produce_record("notifications.requests", f"acme:regup{i}", record)
        ids.append(notification_id(record["tenant_id"], record["request_id"], f"regup{i}", "email"))
    pipe.flush()

    pipe.wait_for_status(ids, {"sent"})
    received = smtp.by_notification_id()
    assert all(len(received[nid]) == 1 for nid in ids)
    # Every hop carried Confluent framing: magic byte 0 and a registry schema id.
    for topic in ("notifications.requests", "notifications.deliver.email", "notifications.status"):
        values = [m.value() for m in pipe.read_topic(topic)]
        assert values and all(v[:1] == b"\x00" for v in values), topic


def test_records_written_before_the_registry_was_turned_on_are_read_by_every_consumer(
    registry_pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """Issue 16, item 3: a deployment that turns the registry on keeps single-object records
    in its topics. The request stage reads an old request, the status stage, the sink and
    the shim's read model an old status event; nothing is dead-lettered."""
    pipe = registry_pipeline
    legacy = build_codec(None, SchemaCatalog.load())
    request = request_record("legacy0")
    pipe.produce(
        "notifications.requests", "acme:legacy0", legacy.encode("NotificationRequest", request)
    )
    new_nid = notification_id(request["tenant_id"], request["request_id"], "legacy0", "email")
    old_nid = f"legacy-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    old_status = {
        "event_id": f"{old_nid}:sent",
        "notification_id": old_nid,
        "request_id": f"r-{old_nid}",
        "tenant_id": "acme",
        "channel": "email",
        "recipient_id": "legacy1",
        "status": "sent",
        "stage": "deliver",
        "request_occurred_at": now,
        "occurred_at": now,
    }
    pipe.produce("notifications.status", old_nid, legacy.encode("StatusEvent", old_status))
    pipe.flush()

    pipe.wait_for_status([new_nid, old_nid], {"sent"})
    assert len(smtp.by_notification_id()[new_nid]) == 1
    with httpx.Client(base_url=pipe.shim_url, headers=HEADERS, timeout=10) as client:

        def in_read_model() -> bool:
            answers = [client.get(f"/api/v1/notifications/{nid}") for nid in (new_nid, old_nid)]
            return all(a.status_code == 200 and a.json()["status"] == "sent" for a in answers)

        wait_until(in_read_model, 60, "both notifications in the sink's read model")
    state = pipe.worker_json(f"/notifications/{old_nid}/")
    assert state["status"] == "sent", state
    dead = [
        pipe.codec.decode(m.value(), "DeadLetter")
        for m in pipe.read_topic("notifications.dead-letter")
    ]
    assert not [d for d in dead if "legacy" in str(d)], dead


def test_a_request_framed_with_a_schema_id_the_registry_does_not_know_is_dead_lettered(
    registry_pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """Issue 16, item 4: valid Confluent framing, an id the registry answers 404 for. The
    message is dead-lettered as UnknownSchemaError (permanent: no retry loop) and the request
    right behind it on the same partition is sent."""
    pipe = registry_pipeline
    key = "acme:unknown-id"
    unknown = b"\x00\x7f\xff\xff\xf0" + b"\x00" * 10  # magic 0, schema id 2147483632
    pipe.produce("notifications.requests", key, unknown)
    behind = request_record("unknown-id")
    pipe.produce_record("notifications.requests", key, behind)
    pipe.flush()

    nid = notification_id(behind["tenant_id"], behind["request_id"], "unknown-id", "email")
    pipe.wait_for_status([nid], {"sent"})
    assert len(smtp.by_notification_id()[nid]) == 1

    def letters() -> list[dict[str, Any]]:
        records = [
            pipe.codec.decode(m.value(), "DeadLetter")
            for m in pipe.read_topic("notifications.dead-letter")
        ]
        return [r for r in records if r["key"] == key.encode()]

    found = wait_until(letters, 30, "the dead letter")
    assert [(r["stage"], r["value"], r["error_type"]) for r in found] == [
        ("request", unknown, "UnknownSchemaError")
    ], found
