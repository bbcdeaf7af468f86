"""Reading a compacted topic to its end, and producing records and tombstones (confluent-kafka)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from core.catalog import TopicCatalog
from core.kafka_clients import consumer_config, producer_config
from core.settings import Settings
from streams.config.kinds import ConfigError

READ_TIMEOUT_SECONDS = 60.0


# A topic created a moment ago (make run, tests) has no leader for a few seconds.
_WAIT_FOR_LEADER = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
}


def _watermarks(consumer: Consumer, tp: TopicPartition) -> tuple[int, int]:
    deadline = time.monotonic() + READ_TIMEOUT_SECONDS
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            transient = isinstance(error, KafkaError) and error.code() in _WAIT_FOR_LEADER
            if not transient or time.monotonic() > deadline:
                raise ConfigError(f"cannot read {tp.topic}: {exc}") from exc
            time.sleep(0.5)


def read_compacted(
    settings: Settings, catalog: TopicCatalog, logical_topic: str
) -> dict[str, bytes]:
    """key -> latest value of every live key (tombstoned keys are absent), read to the end."""
    spec = catalog[logical_topic]
    consumer = Consumer(consumer_config(settings, f"notifications-config-{uuid.uuid4().hex}"))
    try:
        partitions = []
        for p in range(spec.partitions):
            low, high = _watermarks(consumer, TopicPartition(spec.physical_name, p))
            if high > low:
                partitions.append((p, high))
        state: dict[str, bytes] = {}
        if not partitions:
            return state
        consumer.assign(
            [TopicPartition(spec.physical_name, p, OFFSET_BEGINNING) for p, _ in partitions]
        )
        ends = dict(partitions)
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while ends:
            if time.monotonic() > deadline:
                raise ConfigError(f"timed out reading {spec.physical_name} to its end")
            for message in consumer.consume(500, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise ConfigError(f"reading {spec.physical_name}: {error}")
                key = message.key()
                if key is not None:
                    text_key = key.decode("utf-8", errors="replace")
                    value = message.value()
                    if value is None:
                        state.pop(text_key, None)
                    else:
                        state[text_key] = value
            # Position, not the last offset seen: compaction and transactions leave gaps.
            for position in consumer.position(
                [TopicPartition(spec.physical_name, p) for p in list(ends)]
            ):
                if position.offset >= ends[position.partition]:
                    ends.pop(position.partition, None)
        return state
    finally:
        consumer.close()


class Writer:
    """Produces to the config topics; `close()` waits for every delivery and reports failures."""

    def __init__(self, settings: Settings, catalog: TopicCatalog) -> None:
        self._catalog = catalog
        self._producer = Producer(producer_config(settings))
        self._errors: list[str] = []

    def _delivered(self, err: KafkaError | None, _message: object) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(self, logical_topic: str, key: str, value: bytes | None) -> None:
        self._producer.produce(
            self._catalog.name(logical_topic),
            key=key.encode(),
            value=value,
            on_delivery=self._delivered,
        )
        self._producer.poll(0)

    def close(self) -> None:
        remaining = self._producer.flush(30)
        if remaining:
            self._errors.append(f"{remaining} records not delivered within 30s")
        if self._errors:
            raise ConfigError("producing failed: " + "; ".join(self._errors[:5]))
