"""Live updates: Kafka topics -> Server-Sent Events, one consumer per stream.

Each stream owns a confluent-kafka consumer without a consumer group: it is assigned the
partitions it needs and seeks to its start position, and never commits. A daemon thread polls
it, decodes and filters each message, and hands the events it keeps to the asyncio side through
a bounded queue (a slow client makes the thread wait, it never drops events).

Positions: every event carries, as its SSE `id`, the stream's position right after it: the next
offset of every partition the stream reads, `s0:41,s1:17,i2:9` (`s` notifications.status, `i`
notifications.inbox). Messages the filter skipped advance it too. A reconnect that sends it
back as `Last-Event-ID` starts exactly there: nothing is lost and nothing is repeated.
Without one, the stream starts at the partitions' end offsets, read before the answer starts,
so everything written after the stream opened is delivered; the first block of the stream is an
`id:` line with that position, so a client that saw no event yet can still resume.

Replay is bounded: a resume starts no further back than SHIM_SSE_REPLAY_MAX_MESSAGES per
partition nor SHIM_SSE_REPLAY_MAX_SECONDS (else an old id makes the shim read and filter the
topic's whole retention, for every reconnect). A resume cut short by that bound, or by
retention, sets `truncated`, and the stream tells the client (`replay_truncated`).

Isolation: a stream's filter is fixed from the caller's credentials (tenant, user), never from
the request, and a position only says where to read, not what.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from core.catalog import TopicCatalog
from core.ids import expected_partition
from core.kafka_clients import client_config
from core.settings import Settings
from schemas import Codec

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # events waiting for a slow client before the consumer thread waits
POLL_SECONDS = 0.1
WATERMARK_TIMEOUT_SECONDS = 5.0
READ_STATES = frozenset({"read", "unread", "deleted"})

Positions = dict[tuple[str, int], int]  # (source code, partition) -> next offset to read


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Source:
    """One topic a stream reads: which partitions, and which messages become which events."""

    code: str  # the letter naming the topic in positions
    topic: str  # the physical name
    partitions: tuple[int, ...]
    schema: str
    pick: Callable[[dict[str, Any]], SseEvent | None]  # a decoded record -> its event, or None
    key: bytes | None = None  # when set, messages with another key are skipped undecoded


@dataclass(frozen=True)
class Failure:
    """The consumer thread stopped; the stream ends and the client reconnects."""

    reason: str


# -- positions -----------------------------------------------------------------------------------

_ENTRY = re.compile(r"^([a-z])(\d{1,5}):(\d{1,19})$")


def format_position(positions: Positions) -> str:
    return ",".join(f"{code}{p}:{offset}" for (code, p), offset in sorted(positions.items()))


def parse_position(text: str, expected: Iterable[tuple[str, int]]) -> Positions:
    """The positions in a Last-Event-ID; ValueError unless it names exactly the partitions
    this stream reads (an id of another stream, or one from before the topic's partition
    count changed, is refused rather than guessed at)."""
    positions: Positions = {}
    for entry in text.split(","):
        match = _ENTRY.match(entry.strip())
        if match is None:
            raise ValueError(f"{entry!r} is not <topic letter><partition>:<offset>")
        code, partition, offset = match.group(1), int(match.group(2)), int(match.group(3))
        if (code, partition) in positions:
            raise ValueError(f"{code}{partition} appears twice")
        positions[(code, partition)] = offset
    if set(positions) != set(expected):
        raise ValueError("it is not a position of this stream")
    return positions


# -- event payloads ------------------------------------------------------------------------------


def _iso(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def status_payload(event: dict[str, Any]) -> dict[str, Any]:
    """A StatusEvent as JSON, times as ISO 8601 (UTC) like the REST answers."""
    times = ("occurred_at", "request_occurred_at", "deferred_until")
    return {k: (_iso(v) if k in times else v) for k, v in event.items()}


def inbox_payload(message: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(message.get("data_json") or "{}")
    except ValueError:
        data = {}
    return {
        "notification_id": message["notification_id"],
        "title": message.get("title"),
        "body": message["body"],
        "html": message.get("html"),
        "data": data if isinstance(data, dict) else {},
        "created_at": _iso(message["created_at"]),
    }


def format_event(event: SseEvent, position: str) -> str:
    # json.dumps escapes newlines, so the data is one line as SSE requires.
    return f"id: {position}\nevent: {event.event}\ndata: {json.dumps(event.data)}\n\n"


# -- the stream ----------------------------------------------------------------------------------


def replay_start(wanted: int, low: int, high: int, oldest: int) -> int:
    """Where a resumed partition starts: `wanted`, but not before what retention still holds
    (`low`) or the replay bound (`oldest`), and not past the end (a made-up id)."""
    return min(max(wanted, low, oldest), high)


class LiveStream:
    """One client's stream. `open()` (blocking) resolves the start position and assigns the
    partitions; `start()` begins reading; `next()` gives the next event; `close()` stops."""

    def __init__(
        self, settings: Settings, codec: Codec, sources: list[Source], resume: Positions | None
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.sources = sources
        self.resume = resume
        self.positions: Positions = {}  # written by the consumer thread once started
        self.truncated = False  # the resume started later than asked: events were skipped
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue[tuple[SseEvent, str] | Failure] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()

    def open(self) -> str:
        """Creates the consumer and assigns every partition at its start offset; returns the
        start position. Raises KafkaException when the broker does not answer."""
        consumer = Consumer(
            client_config(
                self.settings,
                **{
                    "group.id": f"shim-live-{uuid.uuid4().hex}",  # never joins: assigned
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                    # The broker answers a fetch as soon as a message arrives or after this:
                    # latency stays well under a second, and close() is quick.
                    "fetch.wait.max.ms": 50,
                    "socket.connection.setup.timeout.ms": int(WATERMARK_TIMEOUT_SECONDS * 1000),
                },
            )
        )
        try:
            marks = {
                (source.code, partition): consumer.get_watermark_offsets(
                    TopicPartition(source.topic, partition),
                    timeout=WATERMARK_TIMEOUT_SECONDS,
                    cached=False,
                )
                for source in self.sources
                for partition in source.partitions
            }
            if self.resume is None:
                self.positions = {where: high for where, (_, high) in marks.items()}
            else:
                oldest = self._replay_bounds(consumer, marks)
                for where, (low, high) in marks.items():
                    wanted = self.resume[where]
                    self.positions[where] = replay_start(wanted, low, high, oldest[where])
                    self.truncated |= self.positions[where] > wanted
            topic = {source.code: source.topic for source in self.sources}
            consumer.assign(
                [TopicPartition(topic[code], p, at) for (code, p), at in self.positions.items()]
            )
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        return format_position(self.positions)

    def _replay_bounds(
        self, consumer: Consumer, marks: dict[tuple[str, int], tuple[int, int]]
    ) -> Positions:
        """The oldest offset of each partition a resume may start at: the later of the last
        SHIM_SSE_REPLAY_MAX_MESSAGES and the first written in the last
        SHIM_SSE_REPLAY_MAX_SECONDS."""
        settings = self.settings
        oldest = {
            where: high - settings.shim_sse_replay_max_messages
            for where, (_, high) in marks.items()
        }
        assert self.resume is not None
        behind = [where for where, (_, high) in marks.items() if self.resume[where] < high]
        if not behind:
            return oldest
        since = int((time.time() - settings.shim_sse_replay_max_seconds) * 1000)
        topic = {source.code: source.topic for source in self.sources}
        found = consumer.offsets_for_times(
            [TopicPartition(topic[code], p, since) for code, p in behind],
            timeout=WATERMARK_TIMEOUT_SECONDS,
        )
        code = {source.topic: source.code for source in self.sources}
        for tp in found:
            where = (code[tp.topic], tp.partition)
            if tp.error is not None:  # the count bound still holds
                log.info("live stream: no offset by time for %s: %s", where, tp.error)
            elif tp.offset < 0:  # nothing written since: replay nothing
                oldest[where] = marks[where][1]
            else:
                oldest[where] = max(oldest[where], tp.offset)
        return oldest

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue = asyncio.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="sse-stream", daemon=True)
        self._thread.start()

    async def next(self, within: float) -> tuple[SseEvent, str] | Failure | None:
        """The next event with its position, a Failure, or None after `within` seconds."""
        assert self._queue is not None
        try:
            return await asyncio.wait_for(self._queue.get(), within)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stops the thread, which closes the consumer (within POLL_SECONDS)."""
        self._stop.set()
        if self._thread is None and self._consumer is not None:
            self._consumer.close()  # opened, never started
            self._consumer = None

    # -- the consumer thread -------------------------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        by_topic = {source.topic: source for source in self.sources}
        try:
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=500, timeout=POLL_SECONDS):
                    event = self._take(by_topic, message)
                    if event is not None:
                        self._hand_over((event, format_position(self.positions)))
        except _Stopped:
            pass
        except Exception as exc:  # the client reconnects with its last id and loses nothing
            log.warning("live stream stopped: %s", exc)
            self._try_hand_over(Failure(f"{type(exc).__name__}: {exc}"))
        finally:
            consumer.close()

    def _take(self, by_topic: dict[str, Source], message: Message) -> SseEvent | None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise RuntimeError(error.str())
            if error.code() != KafkaError._PARTITION_EOF:
                log.info("live stream: %s", error.str())
            return None
        source = by_topic[message.topic() or ""]
        partition, offset = message.partition(), message.offset()
        assert partition is not None and offset is not None
        self.positions[(source.code, partition)] = offset + 1
        value = message.value()
        if value is None or (source.key is not None and message.key() != source.key):
            return None
        try:
            record = self.codec.decode(value, source.schema)
        except Exception as exc:  # not ours to fix here: skipped, like the sink skips it
            log.warning(
                "live stream: skipping undecodable %s[%d]@%d: %s",
                source.topic,
                partition,
                offset,
                exc,
            )
            return None
        return source.pick(record)

    def _hand_over(self, item: tuple[SseEvent, str] | Failure) -> None:
        """Puts `item` on the asyncio queue, waiting while it is full, until stopped."""
        assert self._loop is not None and self._queue is not None
        try:
            future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        except RuntimeError as exc:  # the event loop is closed
            raise _Stopped from exc
        while True:
            try:
                future.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                if self._stop.is_set() or self._loop.is_closed():
                    future.cancel()
                    raise _Stopped from None
            except concurrent.futures.CancelledError as exc:  # the server is shutting down
                raise _Stopped from exc

    def _try_hand_over(self, item: Failure) -> None:
        with contextlib.suppress(_Stopped):
            self._hand_over(item)


class _Stopped(Exception):
    pass


# -- the two kinds of stream ---------------------------------------------------------------------


def user_sources(topics: TopicCatalog, tenant_id: str, user_id: str) -> list[Source]:
    """A user's in-app messages (only the partition their key lives on) and the read-state
    changes of their notifications (every status partition)."""
    inbox_topic = topics["notifications.inbox"]
    key = f"{tenant_id}:{user_id}"

    def message(record: dict[str, Any]) -> SseEvent | None:
        if record["tenant_id"] != tenant_id or record["user_id"] != user_id:
            return None
        return SseEvent("message", inbox_payload(record))

    def read_state(event: dict[str, Any]) -> SseEvent | None:
        if (
            event["tenant_id"] != tenant_id
            or event["recipient_id"] != user_id
            or event["status"] not in READ_STATES
        ):
            return None
        return SseEvent(
            "read_state",
            {
                "notification_id": event["notification_id"],
                "status": event["status"],
                "event_id": event["event_id"],
                "occurred_at": _iso(event["occurred_at"]),
            },
        )

    return [
        Source(
            code="i",
            topic=topics.name("notifications.inbox"),
            partitions=(expected_partition(key, inbox_topic.partitions),),
            schema="InAppMessage",
            pick=message,
            key=key.encode(),
        ),
        _status_source(topics, read_state),
    ]


def tenant_sources(
    topics: TopicCatalog, tenant_id: str, statuses: frozenset[str], batch_id: str | None
) -> list[Source]:
    """A tenant's status events, optionally only some statuses and one batch."""

    def status(event: dict[str, Any]) -> SseEvent | None:
        if event["tenant_id"] != tenant_id:
            return None
        if statuses and event["status"] not in statuses:
            return None
        if batch_id is not None and event["batch_id"] != batch_id:
            return None
        return SseEvent("status", status_payload(event))

    return [_status_source(topics, status)]


def _status_source(
    topics: TopicCatalog, pick: Callable[[dict[str, Any]], SseEvent | None]
) -> Source:
    return Source(
        code="s",
        topic=topics.name("notifications.status"),
        partitions=tuple(range(topics["notifications.status"].partitions)),
        schema="StatusEvent",
        pick=pick,
    )


def expected_positions(sources: list[Source]) -> set[tuple[str, int]]:
    return {(source.code, p) for source in sources for p in source.partitions}
