"""The whole pipeline in Confluent framing against a real schema registry (Apicurio)."""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer

from core.ids import notification_id
from schemas import SchemaCatalog, build_codec
from tests.integration.test_pipeline import HEADERS, request_record, shim_body
from tests.support.pipeline import Pipeline, wait_until
from tests.support.smtp import SmtpCapture
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry_pipeline(
    registry_proxy: TcpProxy,
    kafka_bootstrap: str,
    fresh_database: str,
    smtp: SmtpCapture,
    log_dir: Path,
) -> Iterator[Pipeline]:
    """The pipeline's processes reach the registry through `registry_proxy`, so a test can
    take it away from them; the test's own codec talks to it directly."""
    url = registry_url()
    proxied = urlsplit(url)._replace(netloc=f"127.0.0.1:{registry_proxy.port}").geturl()
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        schema_registry_url=proxied,
    )
    pipe.codec = build_codec(url, pipe.schemas)
    pipe.start(shim=True)
    try:
        yield pipe
    finally:
        pipe.stop()


def registry_url() -> str:
    url = os.environ.get("TEST_SCHEMA_REGISTRY_URL")
    if not url:
        pytest.fail("TEST_SCHEMA_REGISTRY_URL is not set: run the suite with `make test`")
    return url


@pytest.fixture(scope="module")
def registry_proxy() -> Iterator[TcpProxy]:
    target = urlsplit(registry_url())
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    try:
        yield proxy
    finally:
        proxy.stop()


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


def test_with_the_registry_gone_cached_schemas_flow_and_an_unknown_id_waits_for_it(
    registry_pipeline: Pipeline, registry_proxy: TcpProxy, smtp: SmtpCapture
) -> None:
    """Issue 16, item 4: the registry goes away mid-run. Messages whose schemas the
    processes hold flow end to end (every stage, the sink); a request written with a schema
    id none of them has seen cannot be read: its stage says so and waits (it is not
    dead-lettered: the registry being away is not the message's fault), and once the
    registry is back it and everything behind it are sent. Runs last: it leaves the
    pipeline waiting on the registry until it is restored."""
    pipe = registry_pipeline
    # A compatible new version of the request schema, registered by another producer: its id
    # is one no process of the pipeline has fetched.
    entry = pipe.schemas.entry("NotificationRequest")
    evolved = json.loads(entry.expanded_json)
    evolved["fields"].append({"name": "campaign", "type": ["null", "string"], "default": None})
    client = SchemaRegistryClient({"url": registry_url()})
    new_id = client.register_schema(
        f"test-evolved-{uuid.uuid4().hex[:8]}", Schema(json.dumps(evolved), "AVRO")
    )

    registry_proxy.cut()
    try:
        cached = request_record("regless0")
        pipe.produce_record("notifications.requests", "acme:regless0", cached)
        pipe.flush()
        cached_id = notification_id("acme", cached["request_id"], "regless0", "email")
        pipe.wait_for_status([cached_id], {"sent"}, timeout=60)

        unseen = {**request_record("regless1"), "campaign": "winter"}
        body = io.BytesIO()
        schemaless_writer(body, parse_schema(evolved), unseen)
        framed = b"\x00" + new_id.to_bytes(4, "big") + body.getvalue()
        pipe.produce("notifications.requests", "acme:regless1", framed)
        behind = request_record("regless1")  # same key, same partition, right behind it
        pipe.produce_record("notifications.requests", "acme:regless1", behind)
        pipe.flush()
        unseen_id = notification_id("acme", unseen["request_id"], "regless1", "email")
        behind_id = notification_id("acme", behind["request_id"], "regless1", "email")

        def says_why() -> bool:
            return f"fetching schema id {new_id}" in pipe.worker.tail(400)

        wait_until(says_why, 30, "the worker to say which schema it cannot fetch")
        pipe.poll_statuses()
        assert not pipe.statuses.get(unseen_id) and not pipe.statuses.get(behind_id)
    finally:
        registry_proxy.restore()

    pipe.wait_for_status([unseen_id, behind_id], {"sent"}, timeout=90)
    received = smtp.by_notification_id()
    assert len(received[unseen_id]) == 1 and len(received[behind_id]) == 1
    dead = [
        pipe.codec.decode(m.value(), "DeadLetter")
        for m in pipe.read_topic("notifications.dead-letter")
    ]
    assert not [d for d in dead if d["key"] == b"acme:regless1"], dead
