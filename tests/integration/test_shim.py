"""The HTTP shim against the real broker and a real Postgres.

A 202 means Kafka acknowledged: the test then reads the request topic with a plain consumer
and decodes what the shim wrote. Status queries go through the real sink.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer
from fastapi.testclient import TestClient

from api_shim.app import create_app
from connectors.postgres_sink import SinkRunner
from connectors.read_model import get_notification, make_engine
from core.catalog import TopicCatalog
from core.ids import status_event_id
from core.kafka_clients import consumer_config, producer_config
from core.provision import provision
from core.settings import Settings
from schemas import SchemaCatalog, build_codec

pytestmark = pytest.mark.integration

CODEC = build_codec(None, SchemaCatalog.load())
KEY_A = {"X-API-Key": "key-a"}
KEY_B = {"X-API-Key": "key-b"}


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, fresh_database: str) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t-{uuid.uuid4().hex[:12]}.",
        database_url=fresh_database,
        shim_api_keys={"key-a": "tenant-a", "key-b": "tenant-b"},
        sink_flush_seconds=0.2,
    )
    provision(settings)
    return settings


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def sink(settings: Settings) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=SinkRunner(settings).run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_request(settings: Settings, request_id: str) -> tuple[Message, dict[str, Any]]:
    """The message on notifications.requests whose record has `request_id`."""
    topic = TopicCatalog.load(settings).name("notifications.requests")
    consumer = Consumer(consumer_config(settings, f"test-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = msg.value()
            assert value is not None
            record = CODEC.decode(value, "NotificationRequest")
            if record["request_id"] == request_id:
                return msg, record
    finally:
        consumer.close()
    raise AssertionError(f"request {request_id} not found on {topic}")


def test_post_is_acknowledged_and_written_to_the_request_topic(
    client: TestClient, settings: Settings
) -> None:
    trace_id = uuid.uuid4().hex
    created = client.post("/api/v1/batches", json={}, headers=KEY_A)
    assert created.status_code == 201, created.text
    batch_id = created.json()["batch_id"]
    body = {
        "recipients": [{"user_id": "u1", "email": "u1@example.com"}, {"user_id": "u2"}],
        "channels": ["email", "in_app"],
        "template_id": "welcome",
        "data": {"plan": "pro"},
        "priority": "high",
        "batch_id": batch_id,
        "metadata": {"source": "test"},
    }
    response = client.post(
        "/api/v1/notifications",
        json=body,
        headers={
            **KEY_A,
            "Idempotency-Key": "idem-1",
            "traceparent": f"00-{trace_id}-{'1' * 16}-01",
        },
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert len(accepted["notifications"]) == 4

    msg, record = read_request(settings, accepted["request_id"])
    assert msg.key() == b"tenant-a:u1"
    headers = dict(msg.headers() or [])
    traceparent = headers["traceparent"]
    assert isinstance(traceparent, bytes)
    assert traceparent.split(b"-")[1] == trace_id.encode()  # the caller's trace continues
    assert record["tenant_id"] == "tenant-a"
    assert record["idempotency_key"] == "idem-1"
    assert [(r["user_id"], r["email"]) for r in record["recipients"]] == [
        ("u1", "u1@example.com"),
        ("u2", None),
    ]
    assert record["channels"] == ["email", "in_app"]
    assert (record["template_id"], record["content"]) == ("welcome", None)
    assert (record["priority"], record["batch_id"]) == ("high", batch_id)
    assert record["metadata"] == {"source": "test"}
    assert abs(record["occurred_at"] - time.time() * 1000) < 60_000


def test_an_override_naming_another_tenants_provider_is_refused(
    client: TestClient, settings: Settings
) -> None:
    body = {
        "recipients": [{"user_id": "u3", "email": "u3@example.com"}],
        "channels": ["email", "sms"],
        "content": {"subject": "Hi", "text": "Hello"},
        "providers": {"email": "tenant-a:sendgrid", "sms": "tenant-b:twilio"},
    }
    refused = client.post("/api/v1/notifications", json=body, headers=KEY_A)
    assert refused.status_code == 422, refused.text
    error = refused.json()
    assert error["error"] == "validation_failed"
    assert [d["field"] for d in error["detail"]] == ["providers.sms"]
    assert "'tenant-b:twilio' is not one of this tenant's providers" in error["message"]

    # The caller's own ids, bare names, platform-wide and environment ones go through as given.
    own = {"email": "tenant-a:sendgrid", "sms": "*:twilio", "push": "fcm", "chat": "env:slack"}
    body = {**body, "channels": ["email", "sms", "push", "chat"], "providers": own}
    accepted = client.post("/api/v1/notifications", json=body, headers=KEY_A)
    assert accepted.status_code == 202, accepted.text
    _msg, record = read_request(settings, accepted.json()["request_id"])
    assert record["provider_overrides"] == own


def test_status_is_served_after_the_sink_wrote_it(
    client: TestClient, settings: Settings, sink: None
) -> None:
    body = {"recipients": [{"user_id": "u9"}], "channels": ["sms"], "content": {"text": "Hi"}}
    response = client.post("/api/v1/notifications", json=body, headers=KEY_A)
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    [ref] = response.json()["notifications"]
    nid = ref["notification_id"]
    assert client.get(f"/api/v1/notifications/{nid}", headers=KEY_A).status_code == 404

    # What the request stage would emit for it.
    now = int(time.time() * 1000)
    event = {
        "event_id": status_event_id(nid, "accepted"),
        "notification_id": nid,
        "request_id": request_id,
        "tenant_id": "tenant-a",
        "channel": "sms",
        "recipient_id": "u9",
        "status": "accepted",
        "stage": "request",
        "request_occurred_at": now,
        "occurred_at": now,
    }
    producer = Producer(producer_config(settings))
    producer.produce(
        TopicCatalog.load(settings).name("notifications.status"),
        key=nid.encode(),
        value=CODEC.encode("StatusEvent", event),
    )
    assert producer.flush(15) == 0
    engine = make_engine(settings.database_url)
    try:
        wait_for(lambda: get_notification(engine, "tenant-a", nid), 30, "the sink")
    finally:
        engine.dispose()

    found = client.get(f"/api/v1/notifications/{nid}", headers=KEY_A)
    assert found.status_code == 200, found.text
    state = found.json()
    assert (state["status"], state["request_id"], state["channel"]) == (
        "accepted",
        request_id,
        "sms",
    )
    assert [e["status"] for e in state["events"]] == ["accepted"]

    other = client.get(f"/api/v1/notifications/{nid}", headers=KEY_B)
    assert other.status_code == 404
    assert other.json()["error"] == "not_found"


def test_ready_when_broker_and_database_are_reachable(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"kafka": "ok", "database": "ok", "views": "ok"}


def test_unreachable_broker_answers_503_not_202(settings: Settings) -> None:
    unreachable = settings.model_copy(
        update={
            "kafka_bootstrap_servers": "127.0.0.1:1",
            "shim_produce_timeout_seconds": 1.0,
            "shim_view_catchup_seconds": 1.0,
        }
    )
    body = {"recipients": [{"user_id": "u1"}], "channels": ["email"], "content": {"text": "x"}}
    with TestClient(create_app(unreachable)) as client:
        started = time.monotonic()
        response = client.post("/api/v1/notifications", json=body, headers=KEY_A)
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        assert response.json()["error"] == "unavailable"
        assert "Traceback" not in response.text
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["kafka"] != "ok"


def test_without_the_database_the_shim_is_degraded_but_ready_and_still_accepts(
    settings: Settings,
) -> None:
    """Sending needs Kafka, not Postgres: /ready stays 200 (`degraded`), sends are 202, reads
    are 503 (issue 19, item 7: /ready answered 503 and took a sending shim out of rotation)."""
    no_database = settings.model_copy(
        update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    )
    body = {"recipients": [{"user_id": "u1"}], "channels": ["email"], "content": {"text": "x"}}
    with TestClient(create_app(no_database)) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["kafka"] == "ok"
        assert ready.json()["checks"]["database"].startswith("failed")
        sent = client.post("/api/v1/notifications", json=body, headers=KEY_A)
        assert sent.status_code == 202, sent.text
        nid = sent.json()["notifications"][0]["notification_id"]
        read = client.get(f"/api/v1/notifications/{nid}", headers=KEY_A)
        assert read.status_code == 503, read.text


def test_a_shim_started_without_configured_keys_refuses_the_demo_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No well-known key works unless someone configured it (issue 21, HIGH 3)."""
    monkeypatch.delenv("SHIM_API_KEYS", raising=False)
    unconfigured = Settings(  # type: ignore[call-arg]
        _env_file=None,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        database_url=settings.database_url,
    )
    body = {"recipients": [{"user_id": "u1"}], "channels": ["email"], "content": {"text": "x"}}
    with TestClient(create_app(unconfigured)) as client:
        for key in ("demo-key", "key-a"):
            response = client.post("/api/v1/notifications", json=body, headers={"X-API-Key": key})
            assert response.status_code == 401, response.text
            listing = client.get("/api/v1/admin/providers", headers={"X-API-Key": key})
            assert listing.status_code == 401, listing.text
