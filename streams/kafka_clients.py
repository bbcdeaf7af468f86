"""confluent-kafka client configuration shared by the shim, the sink and the tools.

The partitioner is murmur2, the Java client's default and what Faust (aiokafka) uses, so a
key lands on the same partition whoever produced it. Co-partitioning of users.profiles,
users.preferences and the stage topics depends on it: upstream producers must use it too.
"""

from __future__ import annotations

from typing import Any

from streams.settings import Settings


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
        **overrides,
    }


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        **overrides,
    }


def admin_config(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap_servers}
