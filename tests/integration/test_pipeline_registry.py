"""The whole pipeline in Confluent framing against a real schema registry (Apicurio)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streams.ids import notification_id
from tests.integration.test_pipeline import HEADERS, request_record, shim_body
from tests.support.pipeline import Pipeline
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
    for topic in ("notifications.requests", "notifications.rendered", "notifications.status"):
        values = [m.value() for m in pipe.read_topic(topic)]
        assert values and all(v[:1] == b"\x00" for v in values), topic
