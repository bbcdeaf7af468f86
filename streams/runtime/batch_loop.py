"""A batched stage loop on confluent-kafka: the runtime the stages move onto (issue 13).

Why not Faust agents: every event costs ~300-400 µs of CPU in Faust's stream, channel and
acknowledgement path, and batching inside Faust (`take_events`) removes none of it
(docs/throughput-spike.md, measured). This loop consumes up to `max_batch` messages at a
time, runs the handler on each, produces every output without awaiting it, and commits a
batch's offsets once all its outputs are acknowledged.

What it guarantees, and how:
- At least once. Offsets are committed only after the broker acknowledged (acks=all,
  idempotent producer) every output of the batch, changelog writes included. A crash
  re-reads from the last commit; handlers must be idempotent, as they are under Faust.
- Order per partition. One consumer, messages handled in offset order, outputs produced in
  order by an idempotent producer (which keeps order with up to 5 requests in flight).
- One bad message never stalls or fails the others. A handler that raises an ordinary
  exception gets that message dead-lettered (`dead_letter`), with none of the outputs or
  table writes it had staged, and the loop goes on with the next message.
- Infrastructure that is down is waited for. A `TransientError` (or a retriable Kafka error)
  stops the batch at that message; the loop seeks every partition of the batch back to its
  first unhandled message, backs off and consumes again. What was handled before it stays.
- Tables survive restarts and rebalances. A `ChangelogTable` keeps a dict per assigned
  partition; each write is produced to its compacted changelog, on the source partition,
  in the same batch (so it is acknowledged before the offset that caused it is committed),
  and a newly assigned partition is restored from its changelog before any of its
  messages is handled. On revocation the loop waits for every produced output, commits
  what it handled, then drops the partition's state.
- A lone message is not held back: the loop takes what the fetcher already has, and waits
  at most `within` seconds (10 ms) for more only when it has nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from core.kafka_clients import consumer_config, producer_config
from core.logs import loggable
from core.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0


class TransientError(Exception):
    """Infrastructure that is down, not a bad message: the message is retried, not parked."""


@dataclass(frozen=True, slots=True)
class Output:
    """One message to produce. `partition` None: the producer's murmur2 partitioner."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None


class ChangelogTable:
    """A key/value table per source partition, backed by a compacted changelog topic that has
    the source's partition count. Values are bytes (the stage encodes them); None deletes.

    Reads see the current message's own staged writes; the loop applies or discards them
    when the handler returns or raises.
    """

    def __init__(self, name: str, changelog_topic: str) -> None:
        self.name = name
        self.changelog_topic = changelog_topic
        self._partitions: dict[int, dict[bytes, bytes]] = {}
        self._staged: dict[tuple[int, bytes], bytes | None] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        staged = (partition, key)
        if staged in self._staged:
            return self._staged[staged]
        return self._partitions.get(partition, {}).get(key)

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        if partition not in self._partitions:
            raise RuntimeError(f"table {self.name}: partition {partition} is not assigned here")
        self._staged[(partition, key)] = value

    def partitions(self) -> set[int]:
        return set(self._partitions)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._partitions.values())

    # -- used by the loop ---------------------------------------------------------------
    def _take_staged(self) -> list[Output]:
        outputs = []
        for (partition, key), value in self._staged.items():
            rows = self._partitions[partition]
            if value is None:
                rows.pop(key, None)
            else:
                rows[key] = value
            outputs.append(Output(self.changelog_topic, key, value, partition=partition))
        self._staged.clear()
        return outputs

    def _discard_staged(self) -> None:
        self._staged.clear()

    def _restore(self, partition: int, reader: Consumer, timeout: float) -> int:
        """Read the partition's changelog from the start to its end; the rows it holds."""
        rows: dict[bytes, bytes] = {}
        tp = TopicPartition(self.changelog_topic, partition)
        low, high = reader.get_watermark_offsets(tp, timeout=timeout)
        if high > low:
            reader.assign([TopicPartition(self.changelog_topic, partition, OFFSET_BEGINNING)])
            position = low
            deadline = time.monotonic() + timeout
            while position < high:
                if time.monotonic() > deadline:
                    raise TransientError(f"restoring {self.name}[{partition}] timed out")
                for message in reader.consume(1000, 0.2):
                    if message.error():
                        continue
                    key, value = message.key(), message.value()
                    if key is not None:
                        if value is None:
                            rows.pop(key, None)
                        else:
                            rows[key] = value
                    position = (message.offset() or 0) + 1
            reader.unassign()
        self._partitions[partition] = rows
        return len(rows)

    def _drop(self, partition: int) -> None:
        self._partitions.pop(partition, None)


@dataclass
class Context:
    """What a handler gets besides the message: where to stage its outputs."""

    outputs: list[Output] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        self.outputs.append(Output(topic, key, value, headers, partition))


Handler = Callable[[Message, Context], Awaitable[None]]
DeadLetter = Callable[[Message, BaseException], Output]


class _Batch:
    """A handled batch: its next offsets and how many of its outputs await acknowledgement."""

    __slots__ = ("failed", "offsets", "pending")

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.pending = 0
        self.failed: KafkaError | None = None

    def delivered(self, err: KafkaError | None, _message: Message) -> None:
        self.pending -= 1
        if err is not None and self.failed is None:
            self.failed = err


class BatchLoop:
    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        group_id: str,
        topics: list[str],
        handler: Handler,
        dead_letter: DeadLetter,
        tables: Iterable[ChangelogTable] = (),
        max_batch: int = 500,
        within: float = 0.01,
        restore_timeout: float = 60.0,
        transient: tuple[type[BaseException], ...] = (),
        on_rebalance: Callable[[], None] | None = None,
        start_from_group: str | None = None,
    ) -> None:
        self.name = name
        self.topics = topics
        self.handler = handler
        self.dead_letter = dead_letter
        self.tables = list(tables)
        self.max_batch = max_batch
        self.within = within
        self.restore_timeout = restore_timeout
        # Errors of the stage's own infrastructure (a schema registry down...) that are
        # waited out like TransientError.
        self.transient = transient
        # Called after every assignment and revocation: state kept outside the tables.
        self.on_rebalance = on_rebalance
        # A group whose committed offsets a partition starts from when this group has none:
        # a stage moved here from a Faust agent continues where the agent stopped.
        self.start_from_group = start_from_group
        self.settings = settings
        self.group_id = group_id
        # Brokers and security from the settings (core.kafka_clients), like every client.
        self.producer = Producer(producer_config(settings))
        self.consumer: Consumer | None = None
        self._inflight: deque[_Batch] = deque()
        self._stopping = False
        self.ready = asyncio.Event()
        self.handled = 0
        self.dead_lettered = 0

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self.consumer = Consumer(
            consumer_config(self.settings, self.group_id, **{"enable.auto.offset.store": False})
        )
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        delay = 0.5
        try:
            while not self._stopping:
                messages = self.consumer.consume(self.max_batch, 0)  # what is fetched already
                if not messages:
                    self._settle()
                    # Nothing buffered: wait in a thread so the event loop stays free.
                    messages = await asyncio.to_thread(
                        self.consumer.consume, self.max_batch, self.within
                    )
                    if not messages:
                        continue
                if await self._handle_batch(messages):
                    delay = 0.5
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                self._settle()
                await asyncio.sleep(0)  # let other loops of the process run
        finally:
            self._drain()
            self.consumer.close()  # leaves the group: its partitions move at once

    def stop(self) -> None:
        self._stopping = True

    # -- one batch ----------------------------------------------------------------------
    async def _handle_batch(self, messages: list[Message]) -> bool:
        """Handle messages in order; False when a transient error stopped the batch early
        (the partitions are then sought back to their first unhandled message)."""
        batch = _Batch()
        for index, message in enumerate(messages):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: consume error %s", self.name, error)
                continue
            context = Context()
            try:
                await self.handler(message, context)
            except Exception as exc:
                self._discard_staged()
                if _transient(exc) or isinstance(exc, self.transient):
                    log.warning("%s: %s; retrying", self.name, loggable(exc))
                    self._rewind(messages[index:])
                    self._queue_for_commit(batch)
                    return False
                log.exception(
                    "%s: dead-lettering %s[%s]@%s",
                    self.name,
                    message.topic(),
                    message.partition(),
                    message.offset(),
                )
                self.dead_lettered += 1
                self._send(batch, [self.dead_letter(message, exc)])
            else:
                self._send(batch, context.outputs + self._take_staged())
            self.handled += 1
            batch.offsets[(message.topic() or "", message.partition() or 0)] = (
                message.offset() or 0
            ) + 1
        self._queue_for_commit(batch)
        return True

    def _queue_for_commit(self, batch: _Batch) -> None:
        if batch.offsets:  # a batch of only consume errors has nothing to commit
            self._inflight.append(batch)

    def _send(self, batch: _Batch, outputs: list[Output]) -> None:
        """Produce outputs, each counted against `batch` until its delivery report."""
        for output in outputs:
            batch.pending += 1
            kwargs: dict[str, Any] = {"on_delivery": batch.delivered}
            if output.partition is not None:
                kwargs["partition"] = output.partition
            if output.headers:
                kwargs["headers"] = output.headers
            while True:
                try:
                    self.producer.produce(output.topic, output.value, output.key, **kwargs)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self.producer.poll(0.05)

    def _rewind(self, unhandled: list[Message]) -> None:
        assert self.consumer is not None
        first: dict[tuple[str, int], int] = {}
        for message in unhandled:
            tp = (message.topic() or "", message.partition() or 0)
            if message.error() is None and tp not in first:
                first[tp] = message.offset() or 0
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))

    # -- commits ------------------------------------------------------------------------
    def _settle(self) -> None:
        """Serve delivery reports, then commit every leading batch that is fully acked."""
        self.producer.poll(0)
        self._commit_acknowledged(asynchronous=True)

    def _commit_acknowledged(self, *, asynchronous: bool) -> None:
        assert self.consumer is not None
        offsets: dict[tuple[str, int], int] = {}
        while self._inflight and self._inflight[0].pending == 0:
            batch = self._inflight.popleft()
            if batch.failed is not None:
                # The producer gave up on an output (idempotent: it retried until
                # delivery.timeout.ms). Committing would lose it: stop, and let the restart
                # re-read from the last commit.
                raise KafkaException(batch.failed)
            offsets.update(batch.offsets)
        if not offsets:
            return
        positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        if asynchronous:
            self.consumer.commit(offsets=positions, asynchronous=True)
        else:
            self.consumer.commit(offsets=positions, asynchronous=False)

    def _drain(self) -> None:
        """Wait for every produced output, then commit synchronously what it covers."""
        self.producer.flush(30)
        if self.consumer is not None:
            try:
                self._commit_acknowledged(asynchronous=False)
            except KafkaException as exc:
                log.warning("%s: final commit failed: %s", self.name, exc)

    # -- staged table writes ------------------------------------------------------------
    def _take_staged(self) -> list[Output]:
        return [output for table in self.tables for output in table._take_staged()]

    def _discard_staged(self) -> None:
        for table in self.tables:
            table._discard_staged()

    # -- rebalance callbacks (run inside consume(), on its thread) ----------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        if self.start_from_group is not None:
            self._start_where_the_other_group_stopped(consumer, partitions)
        if self.tables:
            # Assigned, never subscribed: its group id is only a name, nothing is committed.
            reader = Consumer(consumer_config(self.settings, f"{self.group_id}-restore"))
            try:
                for table in self.tables:
                    for number in sorted(numbers - table.partitions()):
                        rows = table._restore(number, reader, self.restore_timeout)
                        log.info(
                            "%s: restored %s[%d]: %d rows", self.name, table.name, number, rows
                        )
            finally:
                reader.close()
        log.info(
            "%s: assigned %s", self.name, sorted((tp.topic, tp.partition) for tp in partitions)
        )
        if self.on_rebalance is not None:
            self.on_rebalance()
        # This callback may run on the thread of a to_thread(consume): hand over to the loop.
        self._event_loop.call_soon_threadsafe(self.ready.set)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain()
        # Partitions of a table are partitions of the source topics: a number still held on
        # another subscribed topic keeps its state.
        kept = {tp.partition for tp in consumer.assignment()} - {tp.partition for tp in partitions}
        for table in self.tables:
            for number in table.partitions() - kept:
                table._drop(number)
        log.info("%s: revoked %s", self.name, sorted((tp.topic, tp.partition) for tp in partitions))
        if self.on_rebalance is not None:
            self.on_rebalance()

    def _start_where_the_other_group_stopped(
        self, consumer: Consumer, partitions: list[TopicPartition]
    ) -> None:
        """Partitions this group never committed on start at `start_from_group`'s commit.

        Without it, a stage moved off a Faust agent would re-read its topics from the start
        (auto.offset.reset=earliest): every webhook of the topic's retention sent again.
        """
        assert self.start_from_group is not None
        own = consumer.committed(partitions, timeout=self.restore_timeout)
        fresh = [TopicPartition(tp.topic, tp.partition) for tp in own if tp.offset < 0]
        if not fresh:
            return
        other = Consumer(consumer_config(self.settings, self.start_from_group))
        try:
            theirs = {
                (tp.topic, tp.partition): tp.offset
                for tp in other.committed(fresh, timeout=self.restore_timeout)
                if tp.offset >= 0
            }
        finally:
            other.close()
        if not theirs:
            return
        for tp in partitions:
            if (tp.topic, tp.partition) in theirs:
                tp.offset = theirs[(tp.topic, tp.partition)]
        log.info(
            "%s: starting %d partitions at %s's offsets",
            self.name,
            len(theirs),
            self.start_from_group,
        )
        consumer.assign(partitions)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return bool(exc.args[0].retriable())
    return False
