"""The sink's consume loop: poll a batch, write it in one transaction, then commit offsets.

At-least-once: offsets are committed only after the database transaction commits, and every
write is idempotent (see writer.py), so a crash between the two only replays a batch.

Failures, and what happens to the partition:
- a message that does not decode (or carries an unknown status) is logged with its topic
  position, counted, and skipped: it cannot come from the pipeline, whose own dead-letter
  topic sits upstream;
- a schema registry that cannot be reached says nothing about the message: decoding is
  retried with backoff, like an unreachable database;
- a database that is unreachable (or any error that is not about one row) stops the loop on
  that batch, retried with backoff until it is written or the runner is stopped;
- a row the database rejects (DataError / IntegrityError) is isolated by writing the batch
  one record at a time; the rejected record is logged, counted and skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError

from connectors.postgres_sink import metrics
from connectors.postgres_sink.writer import Batch, Record, write_batch
from connectors.read_model import create_tables, make_engine
from core.catalog import TopicCatalog
from core.health import Check, Heartbeat
from core.kafka_clients import consumer_config
from core.lifecycle import rank
from core.logs import loggable
from core.settings import Settings
from schemas import Codec, DecodeError, RegistryUnavailableError, SchemaCatalog, build_codec

log = logging.getLogger(__name__)

_MAX_BACKOFF_SECONDS = 30.0


class _Stopped(Exception):
    """The runner was stopped while waiting for a dependency to come back."""


def _default_codec(settings: Settings) -> Codec:
    return build_codec(settings.schema_registry_url, SchemaCatalog.load())


class SinkRunner:
    """Consumes notifications.status, notifications.inbox and webhooks.delivery-log into the
    read model.

    `run(stop)` blocks until `stop` is set (tests run it in a thread); the current batch is
    finished and committed before the consumer closes.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        codec: Codec | None = None,
        group_id: str | None = None,
    ) -> None:
        self.settings = settings
        catalog = TopicCatalog.load(settings)
        self.status_topic = catalog.name("notifications.status")
        self.inbox_topic = catalog.name("notifications.inbox")
        self.webhook_log_topic = catalog.name("webhooks.delivery-log")
        self.group_id = group_id or f"{settings.full_app_id}-postgres-sink"
        self._engine = engine
        self._codec = codec
        self.assigned = threading.Event()  # set once the group has given us partitions
        self.heartbeat = Heartbeat()  # each turn of the consume loop (liveness)
        self.write_failure: str | None = None  # why the last database write failed, if it did

    def checks(self) -> dict[str, Check]:
        """Readiness (core/health.py): partitions assigned, database writes succeeding."""
        return {
            "partitions": lambda: None if self.assigned.is_set() else "no partitions yet",
            "database": lambda: self.write_failure,
        }

    def run(self, stop: threading.Event) -> None:
        engine = self._engine or make_engine(self.settings.database_url)
        codec = self._codec or _default_codec(self.settings)
        create_tables(engine)
        consumer = Consumer(consumer_config(self.settings, self.group_id))
        consumer.subscribe(
            [self.status_topic, self.inbox_topic, self.webhook_log_topic],
            on_assign=lambda *_: self.assigned.set(),
        )
        log.info(
            "sink consuming %s, %s, %s as %s",
            self.status_topic,
            self.inbox_topic,
            self.webhook_log_topic,
            self.group_id,
        )
        try:
            while not stop.is_set():
                self.heartbeat.beat()
                messages = consumer.consume(
                    num_messages=self.settings.sink_batch_size,
                    timeout=self.settings.sink_flush_seconds,
                )
                if messages:
                    self._handle(consumer, engine, codec, messages, stop)
        finally:
            consumer.close()
            if self._engine is None:
                engine.dispose()
            log.info("sink stopped")

    def _handle(
        self,
        consumer: Consumer,
        engine: Engine,
        codec: Codec,
        messages: list[Message],
        stop: threading.Event,
    ) -> None:
        batch = Batch(statuses=[], inbox_messages=[])
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic is not None and partition is not None and offset is not None
            next_offsets[(topic, partition)] = offset + 1
            try:
                self._add(batch, codec, msg, topic, partition, offset, stop)
            except _Stopped:
                return  # nothing written or committed: the next owner replays the batch
        if batch.records() and not self._write(engine, batch, stop):
            return  # stopped before the batch was written: the next owner replays it
        self._commit(consumer, next_offsets)
        metrics.WRITTEN.labels(self.status_topic).inc(len(batch.statuses))
        metrics.WRITTEN.labels(self.inbox_topic).inc(len(batch.inbox_messages))
        metrics.WRITTEN.labels(self.webhook_log_topic).inc(len(batch.webhook_attempts))

    def _add(
        self,
        batch: Batch,
        codec: Codec,
        msg: Message,
        topic: str,
        partition: int,
        offset: int,
        stop: threading.Event,
    ) -> None:
        value = msg.value()
        try:
            if value is None:
                raise ValueError("message has no value")
            if topic == self.status_topic:
                event = _decode(codec, value, "StatusEvent", stop)
                rank(event["status"], event["retriable"])  # an unknown status is invalid
                batch.statuses.append(Record(event, topic, partition, offset))
            elif topic == self.webhook_log_topic:
                attempt = _decode(codec, value, "WebhookDeliveryAttempt", stop)
                batch.webhook_attempts.append(Record(attempt, topic, partition, offset))
            else:
                message = _decode(codec, value, "InAppMessage", stop)
                batch.inbox_messages.append(Record(message, topic, partition, offset))
        except (DecodeError, ValueError, KeyError) as exc:
            metrics.SKIPPED.labels(topic, "undecodable").inc()
            log.error(
                "skipping undecodable message at %s[%d]@%d: %s",
                topic,
                partition,
                offset,
                loggable(exc),
            )

    def _write(self, engine: Engine, batch: Batch, stop: threading.Event) -> bool:
        """Write the batch, retrying until it is written (True) or `stop` is set (False)."""
        backoff = 0.5
        while True:
            started = time.monotonic()
            try:
                write_batch(engine, batch)
            except (DataError, IntegrityError) as exc:
                log.warning("batch rejected (%s); writing its records one by one", loggable(exc))
                self._write_one_by_one(engine, batch)
                return True
            except Exception as exc:
                self.write_failure = f"writes fail ({type(exc).__name__}); retrying"
                metrics.WRITE_FAILURES.inc()
                log.error(
                    "writing a batch of %d failed, retrying in %.1fs: %s",
                    len(batch.records()),
                    backoff,
                    loggable(exc),
                )
                self.heartbeat.beat()
                if stop.wait(backoff):
                    return False
                self.heartbeat.beat()
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
                continue
            self.write_failure = None
            metrics.BATCH_SECONDS.observe(time.monotonic() - started)
            metrics.BATCH_SIZE.observe(len(batch))
            return True

    def _write_one_by_one(self, engine: Engine, batch: Batch) -> None:
        for record in batch.records():
            is_status = record.topic == self.status_topic
            single = Batch([record], []) if is_status else Batch([], [record])
            if record.topic == self.webhook_log_topic:
                single = Batch([], [], webhook_attempts=[record])
            try:
                write_batch(engine, single)
            except (DataError, IntegrityError) as exc:
                metrics.SKIPPED.labels(record.topic, "rejected").inc()
                log.error(
                    "skipping a record the database rejected at %s: %s",
                    record.position(),
                    loggable(exc),
                )

    def _commit(self, consumer: Consumer, next_offsets: dict[tuple[str, int], int]) -> None:
        if not next_offsets:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Typically a rebalance took the partitions away; the new owner replays the
            # batch, which changes nothing.
            log.warning("offset commit failed: %s", exc)


def _decode(codec: Codec, value: bytes, schema_name: str, stop: threading.Event) -> dict[str, Any]:
    """Decode, waiting out an unreachable schema registry (raises _Stopped if stopped)."""
    backoff = 0.5
    while True:
        try:
            return codec.decode(value, schema_name)
        except RegistryUnavailableError as exc:
            log.error("schema registry unavailable, retrying in %.1fs: %s", backoff, exc)
            if stop.wait(backoff):
                raise _Stopped from exc
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
