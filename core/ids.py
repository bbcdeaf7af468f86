"""Deterministic identifiers.

Ids are derived, not random, wherever a stage may run twice for the same input
(at-least-once): a replayed request yields the same notification ids, a replayed status
yields the same event id, so every downstream effect can be made idempotent.
"""

from __future__ import annotations

import uuid

from aiokafka.partitioner import murmur2

_NAMESPACE = uuid.UUID("8f6f3f0e-6f43-4c1c-9a53-1c2f8f1f6a10")


def request_id_from_position(topic: str, partition: int, offset: int) -> str:
    """For requests produced without a request_id: stable under replay of the topic."""
    return str(uuid.uuid5(_NAMESPACE, f"pos:{topic}:{partition}:{offset}"))


def notification_id(tenant_id: str, request_id: str, user_id: str, channel: str) -> str:
    """Tenant first: callers choose request and user ids, so two tenants may reuse both; a
    tenant id has no ':', which keeps the derivation unambiguous (docs/state-model.md)."""
    return str(uuid.uuid5(_NAMESPACE, f"ntf:{tenant_id}:{request_id}:{user_id}:{channel}"))


def status_event_id(notification_id: str, status: str, attempt: int = 0, detail: str = "") -> str:
    """`detail` tells apart transitions a notification may make more than once (deferrals)."""
    suffix = f":{detail}" if detail else ""
    return str(uuid.uuid5(_NAMESPACE, f"evt:{notification_id}:{status}:{attempt}{suffix}"))


def recipient_key(tenant_id: str, user_id: str) -> str:
    """The key of every topic co-partitioned by recipient."""
    return f"{tenant_id}:{user_id}"


def digest_id(window_key: str, opened_at: int) -> str:
    """A digest window's id, also the id of the notification it becomes when it flushes.

    Derived from the window (tenant, user, channel, digest key) and the time it opened,
    so a replayed flush yields the same notification.
    """
    return str(uuid.uuid5(_NAMESPACE, f"dig:{window_key}|{opened_at}"))


def expected_partition(key: str, partitions: int) -> int:
    """Where murmur2 (Java's and Faust's partitioner) puts `key`."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
