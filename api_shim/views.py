"""The shim's in-memory views of compacted topics (API keys, subscriptions, idempotency, ...).

The shim keeps no database of its own: each view follows one compacted topic from the
beginning in a daemon thread and holds the latest record per key (a tombstone removes it).
Writes the shim makes itself are applied locally at once (`apply`), so a key created by one
request authenticates the next; other shim processes see it as soon as they read it.

The view has no consumer group (partitions are assigned, offsets never committed): every shim
process reads the whole topic. Start-up waits until the view has read up to the end offsets it
found (`wait_caught_up`), so a restarted shim never refuses a key it had accepted before.

The workers' equivalent is streams/runtime/replicated.py (aiokafka, on the worker's event loop). The
shim's views are read from threadpool code as much as from the event loop and the shim's
Kafka client is confluent-kafka, so this one is a thread with a dict behind a lock.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from core.kafka_clients import client_config
from core.settings import Settings
from schemas import Codec

log = logging.getLogger(__name__)

Record = dict[str, Any]


class CompactedView:
    """key -> latest record of one compacted topic."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        schema: str,
        codec: Codec,
        *,
        keep: Callable[[Record], bool] = lambda _record: True,
    ) -> None:
        self.topic = topic
        self._settings = settings
        self._schema = schema
        self._codec = codec
        self._keep = keep  # records failing it are dropped (e.g. expired idempotency answers)
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"view-{topic}", daemon=True)
        self.error: str | None = None

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: str) -> Record | None:
        with self._lock:
            return self._records.get(key)

    def values(self) -> list[Record]:
        with self._lock:
            return list(self._records.values())

    def items_with_prefix(self, prefix: str) -> Iterator[tuple[str, Record]]:
        """Records whose key starts with `prefix` ("tenant:"), a snapshot."""
        with self._lock:
            found = [(k, v) for k, v in self._records.items() if k.startswith(prefix)]
        return iter(found)

    def apply(self, key: str, record: Record | None) -> None:
        """A write this process made (and Kafka acknowledged): visible before it is read back."""
        with self._lock:
            if record is None:
                self._records.pop(key, None)
            else:
                self._records[key] = record

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wait_caught_up(self, timeout: float) -> bool:
        return self._caught_up.wait(timeout)

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def stop(self, wait: float = 2.0) -> None:
        """Asks the reader to stop; a daemon thread still blocked on the broker is left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=wait)

    def _run(self) -> None:
        # A failure (broker down, partition leader moving) restarts the read from the
        # beginning after a pause: records are applied by key, so reading twice is harmless.
        while not self._stop.is_set():
            try:
                self._follow()
                return
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("view of %s failed (%s); restarting", self.topic, self.error)
                self._stop.wait(1.0)

    def _follow(self) -> None:
        consumer = Consumer(
            client_config(
                self._settings,
                **{
                    "group.id": f"shim-view-{uuid.uuid4().hex}",  # never joins: assigned
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 100,
                },
            )
        )
        try:
            ends = self._assign(consumer)
            self.error = None
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                if message is not None:
                    self._take(message)
                if ends:
                    # The consumer's position, not the last offset seen: compaction and
                    # transaction markers leave gaps before the end offset.
                    for tp in consumer.position([TopicPartition(self.topic, p) for p in ends]):
                        if tp.offset >= ends[tp.partition]:
                            del ends[tp.partition]
                if not ends and not self._caught_up.is_set():
                    log.info("view of %s caught up: %d records", self.topic, len(self._records))
                    self._caught_up.set()
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> dict[int, int]:
        """Assigns every partition from the beginning; returns the non-empty ones' end offsets."""
        metadata = consumer.list_topics(self.topic, timeout=5)
        topic_meta = metadata.topics.get(self.topic)
        if topic_meta is None or topic_meta.error is not None:
            raise RuntimeError(
                f"topic {self.topic} is not available: {topic_meta and topic_meta.error}"
            )
        ends: dict[int, int] = {}
        for partition in topic_meta.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=10
            )
            if high > low:
                ends[partition] = high
        consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in topic_meta.partitions]
        )
        return ends

    def _take(self, message: Any) -> None:
        if message.error() is not None:
            if message.error().code() != KafkaError._PARTITION_EOF:
                log.warning("view of %s: %s", self.topic, message.error())
            return
        key = message.key().decode() if message.key() else None
        value = message.value()
        if key is None:
            return
        if value is None:
            self.apply(key, None)
            return
        try:
            record = self._codec.decode(value, self._schema)
        except Exception as exc:  # a bad record must not stop the view; it is skipped
            log.warning("view of %s: skipping undecodable record at %s: %s", self.topic, key, exc)
            return
        self.apply(key, record if self._keep(record) else None)
