"""Priority lanes: a marketing backlog of 20,000 does not delay a transactional notification.

In one run: the transactional latency (request time to `delivered`) is measured with an
idle pipeline, then 20,000 marketing requests (priority low: the bulk lane) are published,
and while they are being worked through, transactional notifications are measured again.
The figures are printed side by side; the added delay must stay under a second.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from core.ids import notification_id
from tests.support.pipeline import Pipeline, wait_until
from tests.support.requests import request_record
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

BACKLOG = 20_000
SAMPLES = 5
MAX_LOADED_SAMPLES = 20


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, fresh_database: str, smtp: SmtpCapture, log_dir: Path
) -> Iterator[Pipeline]:
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        split_lanes=True,  # as `make run` and production run the lanes
    )
    pipe.start()
    try:
        yield pipe
    finally:
        pipe.stop()


def in_app(user: str, **fields: object) -> dict[str, object]:
    return request_record(user, channels=["in_app"], **fields)


class StatusWatcher:
    """Reads notifications.status and decodes only the awaited notification's events: the
    bulk lane writes ~100k status events meanwhile, which Pipeline.poll_statuses would decode
    one by one (minutes of test time, though not of latency: that is taken from the events)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.consumer = Consumer(
            {
                "bootstrap.servers": pipeline.settings.kafka_bootstrap_servers,
                "group.id": f"lanes-test-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([pipeline.topics.name("notifications.status")])

    def until_delivered(self, nid: str, timeout: float = 60) -> list[dict[str, Any]]:
        key, events = nid.encode(), []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.consumer.consume(2000, 0.2):
                if message.error() or message.key() != key:
                    continue
                event = self.pipeline.codec.decode(message.value(), "StatusEvent")
                events.append(event)
                if event["status"] == "delivered":
                    return events
        raise AssertionError(f"{nid} not delivered within {timeout}s: {events}")

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def watcher(pipeline: Pipeline) -> Iterator[StatusWatcher]:
    watch = StatusWatcher(pipeline)
    yield watch
    watch.close()


def latency(pipeline: Pipeline, watcher: StatusWatcher, user: str) -> float:
    """Seconds from the request's time to its `delivered` status."""
    record = in_app(user, priority="high")
    pipeline.produce_record("notifications.requests", f"acme:{user}", record)
    pipeline.flush()
    nid = notification_id(record["tenant_id"], str(record["request_id"]), user, "in_app")
    events = watcher.until_delivered(nid)
    start = int(record["occurred_at"])  # type: ignore[call-overload]
    seconds = (events[-1]["occurred_at"] - start) / 1000
    if seconds > 1:
        print(f"slow: {[(e['status'], e['occurred_at'] - start) for e in events]}")
    return seconds


def bulk_consumed(pipeline: Pipeline, logical_topic: str) -> int:
    """Messages of a bulk topic the bulk worker group has committed (read from Kafka, so
    the test does not have to read 100k status events to know where the backlog is)."""
    group = Consumer(
        {
            "bootstrap.servers": pipeline.settings.kafka_bootstrap_servers,
            "group.id": f"{pipeline.settings.full_app_id}-bulk",
            "enable.auto.commit": False,
        }
    )
    try:
        name = pipeline.topics.name(logical_topic)
        partitions = range(pipeline.topics[logical_topic].partitions)
        committed = group.committed([TopicPartition(name, p) for p in partitions], 10)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        group.close()


def tracked_status(pipeline: Pipeline, nid: str) -> str | None:
    """The notification's status in the status worker's table (its web page)."""
    try:
        return pipeline.worker_json(f"/notifications/{nid}/").get("status")
    except httpx.HTTPError:  # the status worker's web server is not up yet
        return None


def test_the_status_part_tracks_what_the_lanes_deliver(
    pipeline: Pipeline, watcher: StatusWatcher
) -> None:
    """Split, status tracking runs in its own worker (WORKER_LANE=status): it must still
    see every notification's statuses, of both lanes."""
    assert pipeline.status_worker is not None
    for user, priority in (("track-t", "high"), ("track-b", "low")):
        record = in_app(user, priority=priority)
        topic = "notifications.requests" + (".bulk" if priority == "low" else "")
        pipeline.produce_record(topic, f"acme:{user}", record)
        pipeline.flush()
        nid = notification_id(record["tenant_id"], str(record["request_id"]), user, "in_app")
        watcher.until_delivered(nid)
        wait_until(
            lambda nid=nid: tracked_status(pipeline, nid) == "delivered",
            60,
            f"the status worker to track {user}'s notification as delivered",
        )


def test_marketing_backlog_does_not_delay_transactional(
    pipeline: Pipeline, watcher: StatusWatcher
) -> None:
    assert pipeline.bulk_worker is not None
    for i in range(2):  # warm up: first messages pay for connections and metadata
        latency(pipeline, watcher, f"warm{i}")
    idle = [latency(pipeline, watcher, f"idle{i}") for i in range(SAMPLES)]

    # The backlog is published while the bulk worker is down, so all 20,000 are waiting
    # when it comes back, and the transactional samples are taken while it works through them.
    pipeline.bulk_worker.stop()
    for i in range(BACKLOG):
        user = f"m{i}"
        record = in_app(user, priority="low", category="marketing")
        pipeline.produce_record("notifications.requests.bulk", f"acme:{user}", record)
        if i % 5000 == 0:
            pipeline.producer.poll(0)
    pipeline.flush()
    pipeline.bulk_worker.start()
    wait_until(
        lambda: bulk_consumed(pipeline, "notifications.requests.bulk") > 0,
        120,
        "the bulk worker to start on the backlog",
    )

    # Sample only while the backlog is there: the bulk worker drains it in seconds.
    loaded, remaining = [], []
    while len(loaded) < MAX_LOADED_SAMPLES:  # spread over the bulk worker's progress
        left = BACKLOG - bulk_consumed(pipeline, "notifications.deliver.in_app.bulk")
        if left < BACKLOG // 10:
            break
        remaining.append(left)
        loaded.append(latency(pipeline, watcher, f"busy{len(loaded)}"))
        time.sleep(1.0)

    print(
        f"\ntransactional latency, idle:      p50 {statistics.median(idle):.3f}s  "
        f"max {max(idle):.3f}s\n"
        f"transactional latency, 20k bulk:  p50 {statistics.median(loaded):.3f}s  "
        f"max {max(loaded):.3f}s  ({len(loaded)} samples while the bulk lane had "
        f"{remaining[0]} to {remaining[-1]} of {BACKLOG} still to deliver)"
    )
    assert loaded, "the backlog drained before the first sample: no load"
    assert max(loaded) - statistics.median(idle) < 1.0, (idle, loaded)
    assert len(loaded) >= 3, f"the backlog drained after {len(loaded)} samples"
