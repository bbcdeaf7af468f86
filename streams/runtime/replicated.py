"""A read-only, in-process copy of a whole compacted topic (every partition).

Used for configuration that every worker needs whatever partitions it owns (templates).
Faust's GlobalTable would do this, but has a history of missing updates and hanging
recovery with several workers (faust issues #212, #541, #716); a plain consumer with no
group, assigned to every partition, is small enough to own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from core.kafka_auth import aiokafka_config
from core.settings import Settings

log = logging.getLogger(__name__)

Decode = Callable[[bytes], dict[str, Any]]
# (key, old value, new value); None is an absent entry (a new key, a tombstone).
Listener = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]


class ReplicatedView:
    def __init__(self, settings: Settings, topic: str, partitions: int, decode: Decode) -> None:
        self._settings = settings
        self._topic = topic
        self._partitions = partitions
        self._decode = decode
        self._data: dict[str, dict[str, Any]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` on every change, after replaying the entries already held,
        so callers can keep their own indexes of the view."""
        self._listeners.append(listener)
        for key, value in list(self._data.items()):
            listener(key, None, value)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    async def wait_ready(self) -> None:
        """Until the view has read every partition up to where it ended at start-up."""
        assert self._task is not None, "start() first"
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            self._task.result()  # re-raises why the view died
            raise RuntimeError(f"replicated view of {self._topic} stopped before it was ready")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            **aiokafka_config(self._settings, group_id=None, enable_auto_commit=False)
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self._topic, p) for p in range(self._partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if end[tp] > 0}
            if not pending:
                self._ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self._apply(record.key, record.value)
                for tp in list(pending):
                    # Position, not the last offset seen: compaction leaves gaps.
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
                if not self._ready.is_set() and not pending:
                    log.info("%s: replicated %d entries", self._topic, len(self._data))
                    self._ready.set()
        finally:
            await consumer.stop()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        text_key = key.decode("utf-8", errors="replace")
        old = self._data.get(text_key)
        if value is None:
            self._data.pop(text_key, None)
            self._notify(text_key, old, None)
            return
        try:
            new = self._data[text_key] = self._decode(value)
        except Exception:
            log.exception("%s: skipping undecodable entry %r", self._topic, text_key)
            return
        self._notify(text_key, old, new)

    def _notify(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for listener in self._listeners:
            try:
                listener(key, old, new)
            except Exception:
                log.exception("%s: listener failed on %r", self._topic, key)
