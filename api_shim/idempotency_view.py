"""The shim's view of shim.idempotency, bounded in time and in memory.

Every shim process holds every answer kept for an Idempotency-Key (api_shim.views). A plain
view kept each one until the process restarted: memory grew with traffic. Here an answer is
evicted once it is older than the TTL, and past `max_bytes` the oldest answers go first (a
retry that late is rare, and the pipeline's own request dedup still keeps its effect single).

Answers arrive roughly in age order (topic order, or written now), so evicting from the front
of an OrderedDict costs O(1) per answer: no periodic scan of the whole view.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from api_shim.views import CompactedView, Record
from core.settings import Settings
from schemas import Codec

TTL_MS = 24 * 3600 * 1000  # as shim.idempotency's retention.ms in topics.yaml
RECORD_OVERHEAD_BYTES = 512  # the other fields and the dict itself, roughly


def fresh(record: Record, now_ms: int | None = None) -> bool:
    """Answers older than the TTL are forgotten even before Kafka deletes them."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return now_ms - int(record["created_at"]) < TTL_MS


def weight(key: str, record: Record) -> int:
    """The bytes an answer costs, roughly: its body and key dominate."""
    return len(key) + len(record["body_json"]) + RECORD_OVERHEAD_BYTES


class AnswerView(CompactedView):
    """A CompactedView that evicts expired answers and keeps at most `max_bytes` of them."""

    def __init__(
        self, settings: Settings, topic: str, schema: str, codec: Codec, *, max_bytes: int
    ) -> None:
        super().__init__(settings, topic, schema, codec, keep=fresh)
        self.max_bytes = max_bytes
        self.bytes = 0
        self._records: OrderedDict[str, Record] = OrderedDict()

    def get(self, key: str) -> Record | None:
        found = super().get(key)
        return found if found is not None and fresh(found) else None

    def apply(self, key: str, record: Record | None) -> None:
        with self._lock:
            old = self._records.pop(key, None)
            if old is not None:
                self.bytes -= weight(key, old)
            if record is not None and fresh(record):
                self._records[key] = record  # to the end: the newest
                self.bytes += weight(key, record)
            self._evict(int(time.time() * 1000))

    def _evict(self, now_ms: int) -> None:
        while self._records:
            key, oldest = next(iter(self._records.items()))
            if fresh(oldest, now_ms) and self.bytes <= self.max_bytes:
                return
            self._records.popitem(last=False)
            self.bytes -= weight(key, oldest)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


def answer_view(settings: Settings, topic: str, schema: str, codec: Codec) -> AnswerView:
    return AnswerView(settings, topic, schema, codec, max_bytes=settings.shim_idempotency_max_bytes)
