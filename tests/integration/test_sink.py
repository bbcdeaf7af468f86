"""The Postgres sink against the real broker and a real Postgres.

Each module gets uuid-prefixed topics and a fresh database. Status events are produced the
way the pipeline produces them (Avro, keyed by notification id), including a duplicate, a
late lower-ranked event and a message no schema can read; the sink must end with the same
rows however often the topics are replayed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from prometheus_client import REGISTRY

from connectors.postgres_sink import SinkRunner
from connectors.read_model import get_notification, inbox, make_engine, notification_events
from connectors.read_model import notifications as notifications_table
from core.catalog import TopicCatalog
from core.ids import status_event_id
from core.kafka_clients import consumer_config, producer_config
from core.provision import provision
from core.settings import Settings
from schemas import SchemaCatalog, build_codec

pytestmark = pytest.mark.integration

TENANT = "tenant-sink"
CODEC = build_codec(None, SchemaCatalog.load())


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, fresh_database: str) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t-{uuid.uuid4().hex[:12]}.",
        database_url=fresh_database,
        sink_batch_size=4,  # several batches, so duplicates straddle batch boundaries
        sink_flush_seconds=0.2,
    )
    provision(settings)
    return settings


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[sa.Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def status_event(
    notification_id: str,
    status: str,
    occurred_at: int,
    *,
    attempt: int = 0,
    retriable: bool = False,
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": status_event_id(notification_id, status, attempt),
        "notification_id": notification_id,
        "request_id": "req-1",
        "tenant_id": TENANT,
        "batch_id": "batch-1",
        "channel": "email",
        "recipient_id": "u1",
        "status": status,
        "reason": reason,
        "retriable": retriable,
        "provider": "smtp" if status in ("sent", "delivered", "failed") else None,
        "provider_message_id": None,
        "stage": "test",
        "attempt": attempt,
        "deferred_until": None,
        "request_occurred_at": 1_700_000_000_000,
        "occurred_at": occurred_at,
    }


def produce(settings: Settings, topic: str, items: list[tuple[str, bytes]]) -> None:
    producer = Producer(producer_config(settings))
    for key, value in items:
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(15) == 0


def run_sink(settings: Settings, group_id: str, until: Callable[[], bool]) -> None:
    """Run a SinkRunner in a thread until `until()` holds, then stop it gracefully."""
    stop = threading.Event()
    runner = SinkRunner(settings, group_id=group_id)
    failure: list[BaseException] = []

    def target() -> None:
        try:
            runner.run(stop)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(failure) or until(), 60, "the sink")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the sink did not stop within 30 s of being asked"
    assert not failure, failure


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def caught_up(settings: Settings, group_id: str, topics: list[str]) -> Callable[[], bool]:
    """True once `group_id` has committed the end offset of every partition of `topics`."""

    def check() -> bool:
        consumer = Consumer(consumer_config(settings, group_id))
        try:
            metadata = consumer.list_topics(timeout=10)
            partitions = [
                TopicPartition(topic, p)
                for topic in topics
                for p in metadata.topics[topic].partitions
            ]
            committed = consumer.committed(partitions, timeout=10)
            for tp in committed:
                _low, high = consumer.get_watermark_offsets(tp, timeout=10)
                if high > 0 and tp.offset != high:
                    return False
            return True
        except KafkaException:  # e.g. the group coordinator is still loading
            return False
        finally:
            consumer.close()

    return check


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table.name: sorted(tuple(row) for row in conn.execute(sa.select(table)))
            for table in (notifications_table, notification_events, inbox)
        }


def skipped(topic: str) -> float:
    value = REGISTRY.get_sample_value(
        "notifications_sink_skipped_total", {"topic": topic, "reason": "undecodable"}
    )
    return value or 0.0


@pytest.fixture(scope="module")
def written(settings: Settings, engine: sa.Engine) -> dict[str, Any]:
    """Produce the scenario, run the sink over it once; the ids the tests look at."""
    catalog = TopicCatalog.load(settings)
    status_topic = catalog.name("notifications.status")
    inbox_topic = catalog.name("notifications.inbox")
    n1, n2, n3 = (str(uuid.uuid4()) for _ in range(3))
    t = 1_700_000_000_000
    events = [
        status_event(n1, "accepted", t + 1),
        status_event(n1, "rendered", t + 2),
        status_event(n1, "sent", t + 3),
        status_event(n1, "sent", t + 3),  # the same event again (a replayed stage)
        status_event(n1, "delivered", t + 5),
        status_event(n1, "queued", t + 4),  # late: outranked by delivered, history only
        status_event(n2, "accepted", t + 1),
        status_event(n2, "failed", t + 2, retriable=True, reason="timeout"),
        status_event(n2, "failed", t + 3, attempt=1, reason="mailbox unknown"),
        status_event(n2, "failed", t + 2, retriable=True, reason="timeout"),  # late duplicate
        status_event(n3, "read", t + 9),  # read before its inbox message reaches the sink
    ]
    items = [(e["notification_id"], CODEC.encode("StatusEvent", e)) for e in events]
    items.insert(3, (n1, b"not avro at all"))
    produce(settings, status_topic, items)
    message = {
        "notification_id": n3,
        "tenant_id": TENANT,
        "user_id": "u3",
        "title": "Hello",
        "body": "You have mail",
        "html": None,
        "data_json": '{"k": 1}',
        "created_at": t + 7,
    }
    produce(settings, inbox_topic, [(f"{TENANT}:u3", CODEC.encode("InAppMessage", message))])
    skipped_before = skipped(status_topic)
    group = f"{settings.full_app_id}-postgres-sink"
    run_sink(settings, group, caught_up(settings, group, [status_topic, inbox_topic]))
    return {
        "n1": n1,
        "n2": n2,
        "n3": n3,
        "events": events,
        "status_topic": status_topic,
        "inbox_topic": inbox_topic,
        "skipped": skipped(status_topic) - skipped_before,
    }


def test_latest_state_is_the_highest_ranked_status(
    written: dict[str, Any], engine: sa.Engine
) -> None:
    n1 = get_notification(engine, TENANT, written["n1"])
    assert n1 is not None
    assert n1["status"] == "delivered"
    assert n1["provider"] == "smtp"
    assert n1["batch_id"] == "batch-1"
    assert n1["created_at"].timestamp() * 1000 == 1_700_000_000_001
    assert n1["updated_at"].timestamp() * 1000 == 1_700_000_000_005
    n2 = get_notification(engine, TENANT, written["n2"])
    assert n2 is not None
    assert (n2["status"], n2["retriable"], n2["reason"]) == ("failed", False, "mailbox unknown")


def test_history_has_every_event_once_in_time_order(
    written: dict[str, Any], engine: sa.Engine
) -> None:
    n1 = get_notification(engine, TENANT, written["n1"])
    assert n1 is not None
    assert [e["status"] for e in n1["events"]] == [
        "accepted",
        "rendered",
        "sent",
        "queued",
        "delivered",
    ]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(notification_events)).mappings().all()
    assert len(rows) == len({e["event_id"] for e in written["events"]}) == 9
    assert {row["source_topic"] for row in rows} == {written["status_topic"]}
    assert all(row["source_offset"] >= 0 for row in rows)


def test_inbox_message_is_stored_and_marked_read(
    written: dict[str, Any], engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        [row] = conn.execute(sa.select(inbox)).mappings().all()
    assert row["notification_id"] == written["n3"]
    assert (row["tenant_id"], row["user_id"], row["title"]) == (TENANT, "u3", "Hello")
    assert row["data_json"] == '{"k": 1}'
    assert row["read_at"].timestamp() * 1000 == 1_700_000_000_009


def test_undecodable_message_is_skipped_and_counted(written: dict[str, Any]) -> None:
    assert written["skipped"] == 1


def test_other_tenant_sees_nothing(written: dict[str, Any], engine: sa.Engine) -> None:
    assert get_notification(engine, "someone-else", written["n1"]) is None


def test_replay_from_the_start_changes_nothing(
    written: dict[str, Any], settings: Settings, engine: sa.Engine
) -> None:
    before = snapshot(engine)
    group = f"replay-{uuid.uuid4().hex[:8]}"
    topics = [written["status_topic"], written["inbox_topic"]]
    run_sink(settings, group, caught_up(settings, group, topics))
    assert snapshot(engine) == before


def test_sink_resumes_after_restart_with_new_events(
    written: dict[str, Any], settings: Settings, engine: sa.Engine
) -> None:
    n1 = written["n1"]
    late = status_event(n1, "read", 1_700_000_000_020)
    produce(settings, written["status_topic"], [(n1, CODEC.encode("StatusEvent", late))])
    group = f"{settings.full_app_id}-postgres-sink"
    run_sink(settings, group, caught_up(settings, group, [written["status_topic"]]))
    found = get_notification(engine, TENANT, n1)
    assert found is not None
    assert found["status"] == "read"
    assert len(found["events"]) == 6
