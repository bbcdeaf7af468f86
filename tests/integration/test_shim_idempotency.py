"""Idempotency-Key replay against the real broker, a real Postgres and the real sink.

Issue 21, MEDIUM 11: an answer too large for a Kafka record (a 1,000 x 8 fan-out's ids) used to
fail after the request was produced, so the retry produced it again. MEDIUM 15: keys were
shared by every principal of a tenant, so one end user's answer was replayed to another.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient

from api_shim.app import create_app
from api_shim.models import MAX_RECIPIENTS, Channel
from connectors.postgres_sink import SinkRunner
from connectors.read_model import make_engine, user_unread_count
from core.catalog import TopicCatalog
from core.ids import status_event_id
from core.kafka_clients import producer_config
from core.provision import provision
from core.settings import Settings
from schemas import SchemaCatalog, build_codec
from tests.support.jwks import Issuer
from tests.support.pipeline import wait_until

pytestmark = pytest.mark.integration

CODEC = build_codec(None, SchemaCatalog.load())
KEY_A = {"X-API-Key": "key-a"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with Issuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, fresh_database: str, issuer: Issuer) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t-{uuid.uuid4().hex[:12]}.",
        database_url=fresh_database,
        shim_api_keys={"key-a": "tenant-a"},
        sink_flush_seconds=0.1,
        **issuer.settings(),
    )
    provision(settings)
    return settings


@pytest.fixture(scope="module")
def topics(settings: Settings) -> TopicCatalog:
    return TopicCatalog.load(settings)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[sa.Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def sink(settings: Settings) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=SinkRunner(settings).run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def requests_with_id(settings: Settings, topic: str, request_id: str) -> int:
    """How many records on `topic` (read to its end) carry `request_id`."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "unused"}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        ends: dict[int, int] = {}
        assignment = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
                assignment.append(TopicPartition(topic, partition, low))
        consumer.assign(assignment)
        found = 0
        deadline = time.monotonic() + 30
        while ends and time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            value, partition, offset = message.value(), message.partition(), message.offset()
            assert value is not None and partition is not None and offset is not None
            if CODEC.decode(value, "NotificationRequest")["request_id"] == request_id:
                found += 1
            if offset >= ends[partition] - 1:
                del ends[partition]
        assert not ends, f"did not read {topic} to its end"
        return found
    finally:
        consumer.close()


def test_a_1000_by_8_fan_out_with_a_key_is_accepted_and_produced_once(
    client: TestClient, settings: Settings, topics: TopicCatalog
) -> None:
    # Long user ids make the answer (8,000 ids) well over Kafka's 1 MB record limit.
    recipients = [{"user_id": f"user-{i:04d}-" + "x" * 100} for i in range(MAX_RECIPIENTS)]
    body = {
        "recipients": recipients,
        "channels": [channel.value for channel in Channel],
        "content": {"subject": "Hi", "text": "Hello"},
    }
    headers = {**KEY_A, "Idempotency-Key": f"fan-out-{uuid.uuid4().hex}"}
    first = client.post("/api/v1/notifications", json=body, headers=headers)
    assert first.status_code == 202, first.text[:500]
    assert len(first.content) > 1_048_576
    assert len(first.json()["notifications"]) == MAX_RECIPIENTS * len(Channel)

    again = client.post("/api/v1/notifications", json=body, headers=headers)
    assert again.status_code == 202, again.text[:500]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()

    topic = topics.name("notifications.requests")
    assert requests_with_id(settings, topic, first.json()["request_id"]) == 1


# -- /me: keys are scoped to the end user -------------------------------------------------------


def seed_unread(settings: Settings, topics: TopicCatalog, user: str, count: int) -> list[str]:
    """`count` delivered in-app messages for `user` of tenant-a, as the pipeline writes them."""
    producer = Producer(producer_config(settings))
    now = int(time.time() * 1000)
    ids = []
    for i in range(count):
        nid = str(uuid.uuid4())
        for step, status in enumerate(("accepted", "delivered")):
            event = {
                "event_id": status_event_id(nid, status),
                "notification_id": nid,
                "request_id": f"req-{nid[:8]}",
                "tenant_id": "tenant-a",
                "batch_id": None,
                "channel": "in_app",
                "recipient_id": user,
                "status": status,
                "stage": "test",
                "request_occurred_at": now + i,
                "occurred_at": now + i + step + 1,
            }
            producer.produce(
                topics.name("notifications.status"),
                key=nid.encode(),
                value=CODEC.encode("StatusEvent", event),
            )
        message = {
            "notification_id": nid,
            "tenant_id": "tenant-a",
            "user_id": user,
            "title": f"message {i}",
            "body": "body",
            "data_json": json.dumps({}),
            "created_at": now + i,
        }
        producer.produce(
            topics.name("notifications.inbox"),
            key=f"tenant-a:{user}".encode(),
            value=CODEC.encode("InAppMessage", message),
        )
        ids.append(nid)
    assert producer.flush(15) == 0
    return ids


def test_two_end_users_with_one_key_on_a_me_route_each_get_their_own_answer(
    client: TestClient,
    settings: Settings,
    topics: TopicCatalog,
    issuer: Issuer,
    engine: sa.Engine,
    sink: None,
) -> None:
    dora, eve = f"dora-{uuid.uuid4().hex[:6]}", f"eve-{uuid.uuid4().hex[:6]}"
    seed_unread(settings, topics, dora, 2)
    seed_unread(settings, topics, eve, 1)
    wait_until(
        lambda: (
            user_unread_count(engine, "tenant-a", dora) == 2
            and user_unread_count(engine, "tenant-a", eve) == 1
        ),
        30,
        "the sink to write the seeded messages",
    )
    key = {"Idempotency-Key": "read-all-1"}  # a key anyone could guess
    as_dora = {**issuer.bearer(issuer.token(sub=dora, tenant_id="tenant-a")), **key}
    as_eve = {**issuer.bearer(issuer.token(sub=eve, tenant_id="tenant-a")), **key}

    by_dora = client.post("/api/v1/me/notifications/read-all", headers=as_dora)
    assert by_dora.status_code == 202, by_dora.text
    assert by_dora.json()["marked"] == 2

    by_eve = client.post("/api/v1/me/notifications/read-all", headers=as_eve)
    assert by_eve.status_code == 202, by_eve.text
    assert "Idempotent-Replayed" not in by_eve.headers  # not dora's answer
    assert by_eve.json()["marked"] == 1
    wait_until(
        lambda: user_unread_count(engine, "tenant-a", eve) == 0, 15, "eve's message to be read"
    )

    # Each user's own retry is still a replay of their own answer.
    retry = client.post("/api/v1/me/notifications/read-all", headers=as_eve)
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.json() == by_eve.json()
