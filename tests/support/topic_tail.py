"""Read back what was produced to a topic: every partition from the beginning, decoded.

No consumer group is joined (partitions are assigned), so opening one costs no rebalance.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from core.catalog import TopicCatalog
from core.kafka_clients import consumer_config
from core.settings import Settings
from schemas import Codec


@dataclass(frozen=True)
class Produced:
    key: str | None
    value: dict[str, Any]
    raw: bytes
    partition: int
    offset: int


class TopicTail:
    def __init__(self, settings: Settings, logical: str, schema: str, codec: Codec) -> None:
        self.topic = TopicCatalog.load(settings).name(logical)
        self.schema = schema
        self.codec = codec
        self.messages: list[Produced] = []
        self._consumer = Consumer(consumer_config(settings, f"tail-{uuid.uuid4().hex[:8]}"))
        partitions = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions.partitions]
        )

    def poll(self, seconds: float = 0.3) -> list[Produced]:
        """Everything that arrives within `seconds` (or until nothing more comes)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self._consumer.poll(0.05)
            if message is None or message.error():
                continue
            raw = message.value()
            assert raw is not None
            key = message.key()
            self.messages.append(
                Produced(
                    key=key.decode() if key else None,
                    value=self.codec.decode(raw, self.schema),
                    raw=raw,
                    partition=message.partition(),
                    offset=message.offset(),
                )
            )
        return self.messages

    def wait_for(
        self, predicate: Callable[[list[Produced]], Any], what: str, timeout: float = 20
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate(self.poll(0.2))
            if result:
                return result
        raise AssertionError(f"timed out after {timeout}s waiting for {what} on {self.topic}")

    def close(self) -> None:
        self._consumer.close()
