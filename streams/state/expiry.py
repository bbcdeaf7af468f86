"""Expiry for plain Faust tables (windowed tables are avoided: open upstream bugs).

Entries carry the time they were written (`at`, epoch ms) and the partition they belong to.
Reads treat an old entry as absent at once; a sweep run from inside the stream (so the
tombstone goes to the right changelog partition) deletes old entries of the partition
being processed, at most once per interval, to bound memory.
"""

from __future__ import annotations

from typing import Any


def is_live(entry: dict[str, Any] | None, now_ms: int, ttl_ms: int) -> bool:
    return entry is not None and now_ms - int(entry.get("at", 0)) <= ttl_ms


class Sweeper:
    def __init__(self, table: Any, ttl_ms: int, interval_ms: int = 60_000) -> None:
        self._table = table
        self._ttl_ms = ttl_ms
        self._interval_ms = interval_ms
        self._last_sweep: dict[int, int] = {}

    def maybe_sweep(self, partition: int, now_ms: int) -> int:
        """Delete expired entries of `partition`; call only while processing that partition."""
        last = self._last_sweep.setdefault(partition, now_ms)
        if now_ms - last < self._interval_ms:
            return 0
        self._last_sweep[partition] = now_ms
        expired = [
            key
            for key, entry in list(self._table.items())
            if entry is not None
            and entry.get("partition") == partition
            and not is_live(entry, now_ms, self._ttl_ms)
        ]
        for key in expired:
            del self._table[key]
        return len(expired)
