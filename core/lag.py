"""Consumer lag per group, topic and partition, on /metrics.

    notifications_consumer_lag_messages{group, topic, partition}
    notifications_consumer_lag_seconds{group, topic, partition}

Messages: the partition's high watermark minus the group's committed offset, read with two
admin requests per scrape (the group's committed offsets, then the latest offsets of those
partitions) and kept for `cache_seconds`. A partition the group has never committed is left
out.

Seconds: how long ago the first message the group has not consumed reached the broker,
dated without reading it, the way kafka-lag-exporter does: each read keeps (time, high
watermark) per partition, and the committed offset's arrival is interpolated between the
last read when the watermark was at or below it and the first read when it was past it. The
figure is as fine as the scrapes are frequent; for an offset older than the history
(`history` reads) it is a lower bound, the age of the oldest read.

Each process of a group reports the whole group, so take `max by (group, topic, partition)`
over processes; the figures come from the broker, not from the process, and are the same
whichever one answers (seconds: close, each process keeps its own history).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from core.kafka_clients import admin_config
from core.settings import Settings

log = logging.getLogger(__name__)
METRIC = "notifications_consumer_lag_messages"
SECONDS_METRIC = "notifications_consumer_lag_seconds"
Partition = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True)
class Position:
    committed: int  # the next offset the group will consume
    high: int  # the next offset the broker will write

    @property
    def behind(self) -> int:
        return max(0, self.high - self.committed)


def group_positions(
    admin: AdminClient, group: str, timeout: float = 5.0
) -> dict[Partition, Position]:
    """Committed offset and high watermark of every partition the group has committed on."""
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
    return {
        (tp.topic, tp.partition): Position(committed[(tp.topic, tp.partition)], f.result().offset)
        for tp, f in latest.items()
    }


@dataclass
class _Reading:
    first_seen: float  # when the watermark was first read at `high`
    last_seen: float  # and last
    high: int


class WatermarkHistory:
    """Reads of one partition's high watermark over time, to date an offset's arrival."""

    def __init__(self, keep: int) -> None:
        self._readings: deque[_Reading] = deque(maxlen=keep)

    def add(self, at: float, high: int) -> None:
        last = self._readings[-1] if self._readings else None
        if last is not None and last.high == high:
            last.last_seen = at
        else:
            self._readings.append(_Reading(at, at, high))

    def lag_seconds(self, committed: int, now: float) -> float:
        """Seconds since the message at `committed` arrived; 0 when nothing is waiting."""
        readings = self._readings
        if not readings or committed >= readings[-1].high:
            return 0.0
        if committed < readings[0].high:
            # It arrived before the oldest read: at least that long ago.
            return max(0.0, now - readings[0].first_seen)
        # The first read past it, and the read before (at or below it, so one exists).
        after = next(r for r in readings if r.high > committed)
        before = readings[readings.index(after) - 1]
        share = (committed + 1 - before.high) / (after.high - before.high)
        arrived = before.last_seen + (after.first_seen - before.last_seen) * share
        return max(0.0, now - arrived)


class ConsumerLag(Collector):
    def __init__(
        self, settings: Settings, group: str, cache_seconds: float = 5.0, history: int = 720
    ) -> None:
        self.group = group
        self._settings = settings
        self._cache_seconds = cache_seconds
        self._history_size = history  # 720 reads: an hour at a 5 s scrape
        self._admin: AdminClient | None = None
        self._positions: dict[Partition, Position] = {}
        self._history: dict[Partition, WatermarkHistory] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def positions(self) -> dict[Partition, Position]:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self._cache_seconds:
                if self._admin is None:
                    self._admin = AdminClient(admin_config(self._settings))
                try:
                    self._positions = group_positions(self._admin, self.group)
                except KafkaException as exc:  # the broker is away: say nothing, not zero
                    log.warning("consumer lag of %s: %s", self.group, exc)
                    self._positions = {}
                for key, position in self._positions.items():
                    history = self._history.get(key)
                    if history is None:
                        history = self._history[key] = WatermarkHistory(self._history_size)
                    history.add(now, position.high)
                self._read_at = now
            return self._positions

    def lag(self) -> dict[Partition, int]:
        return {key: p.behind for key, p in self.positions().items()}

    def lag_seconds(self) -> dict[Partition, float]:
        positions, now = self.positions(), time.monotonic()
        with self._lock:
            return {
                key: self._history[key].lag_seconds(p.committed, now)
                for key, p in positions.items()
            }

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without describe, registering calls collect(): admin requests at start-up.
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        messages, seconds = self._families()
        for (topic, partition), behind in sorted(self.lag().items()):
            messages.add_metric([self.group, topic, str(partition)], behind)
        for (topic, partition), age in sorted(self.lag_seconds().items()):
            seconds.add_metric([self.group, topic, str(partition)], round(age, 3))
        yield messages
        yield seconds

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["group", "topic", "partition"]
        return (
            GaugeMetricFamily(
                METRIC,
                "Messages between a group's committed offset and the partition's high watermark.",
                labels=labels,
            ),
            GaugeMetricFamily(
                SECONDS_METRIC,
                "Seconds since the first message the group has not consumed reached the broker "
                "(interpolated from high-watermark reads).",
                labels=labels,
            ),
        )


class GroupsLag(Collector):
    """Several groups' lag as one pair of metric families (a process with a Faust consumer
    and a batched loop has two groups; the families may be registered only once)."""

    def __init__(self, groups: list[ConsumerLag]) -> None:
        self.groups = groups

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from ConsumerLag._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        messages, seconds = ConsumerLag._families()
        for group in self.groups:
            for family, merged in zip(group.collect(), (messages, seconds), strict=True):
                merged.samples.extend(family.samples)
        yield messages
        yield seconds


def register(settings: Settings, *groups: str) -> GroupsLag:
    """Report the lag of each of `groups` on this process's /metrics."""
    collector = GroupsLag([ConsumerLag(settings, group) for group in groups])
    REGISTRY.register(collector)
    return collector
