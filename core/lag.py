"""Consumer lag per group, topic and partition, on /metrics.

    notifications_consumer_lag_messages{group, topic, partition}

is the partition's high watermark minus the group's committed offset, read with two admin
requests per scrape (the group's committed offsets, then the latest offsets of those
partitions) and kept for `cache_seconds`. A partition the group has never committed is left
out. Each process of a group reports the whole group, so take `max by (group, topic,
partition)` over processes; the figures come from the broker, not from the process, and are
the same whichever one answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from core.kafka_clients import admin_config
from core.settings import Settings

log = logging.getLogger(__name__)
METRIC = "notifications_consumer_lag_messages"
Lag = dict[tuple[str, int], int]  # (topic, partition) -> messages behind


def group_lag(admin: AdminClient, group: str, timeout: float = 5.0) -> Lag:
    """Messages behind the high watermark, per partition the group has committed on."""
    request = [ConsumerGroupTopicPartitions(group)]
    result = admin.list_consumer_group_offsets(request, request_timeout=timeout)[group]
    committed = {
        (tp.topic, tp.partition): tp.offset for tp in result.result().topic_partitions or []
    }
    committed = {key: offset for key, offset in committed.items() if offset >= 0}
    if not committed:
        return {}
    latest_request = {TopicPartition(t, p): OffsetSpec.latest() for t, p in committed}
    latest = admin.list_offsets(latest_request, request_timeout=timeout)
    lag: Lag = {}
    for tp, future in latest.items():
        key = (tp.topic, tp.partition)
        lag[key] = max(0, future.result().offset - committed[key])
    return lag


class ConsumerLag(Collector):
    def __init__(self, settings: Settings, group: str, cache_seconds: float = 5.0) -> None:
        self.group = group
        self._settings = settings
        self._cache_seconds = cache_seconds
        self._admin: AdminClient | None = None
        self._lag: Lag = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def lag(self) -> Lag:
        with self._lock:
            if time.monotonic() - self._read_at >= self._cache_seconds:
                if self._admin is None:
                    self._admin = AdminClient(admin_config(self._settings))
                try:
                    self._lag = group_lag(self._admin, self.group)
                except KafkaException as exc:  # the broker is away: say nothing, not zero
                    log.warning("consumer lag of %s: %s", self.group, exc)
                    self._lag = {}
                self._read_at = time.monotonic()
            return self._lag

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without describe, registering calls collect(): admin requests at start-up.
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for (topic, partition), behind in sorted(self.lag().items()):
            family.add_metric([self.group, topic, str(partition)], behind)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            METRIC,
            "Messages between a group's committed offset and the partition's high watermark.",
            labels=["group", "topic", "partition"],
        )


def register(settings: Settings, group: str) -> ConsumerLag:
    """Report `group`'s lag on this process's /metrics."""
    collector = ConsumerLag(settings, group)
    REGISTRY.register(collector)
    return collector
