"""Replay dead letters: put the original bytes of selected records back on their source topic.

    python -m streams.replay --tenant acme            # dry run: what would be replayed
    python -m streams.replay --tenant acme --apply    # re-inject, wait for every ack

Reads notifications.dead-letter from the beginning up to the end offsets taken at start, so it
terminates and never reads what it re-injects (nor what fails again meanwhile). At-least-once:
running it twice re-injects twice. See docs/dead-letters.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from core.catalog import TopicCatalog
from core.kafka_clients import consumer_config, producer_config
from core.settings import Settings, get_settings
from schemas import Codec, DecodeError, RegistryUnavailableError, build_codec

DEAD_LETTER_TOPIC = "notifications.dead-letter"
REPLAY_HEADER = "x-replayed-from"
TRACE_HEADERS = ("traceparent", "tracestate")
READ_IDLE_TIMEOUT_SECONDS = 30.0
ACK_TIMEOUT_SECONDS = 60.0
ANY_PARTITION = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner decides
Headers = list[tuple[str, str | bytes | None]]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_LEADER_YET = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
}


class ReplayError(Exception):
    """Kafka or the registry failed us: exit 1."""


class BadArgument(Exception):
    """An argument only the broker can refute (a partition the topic does not have): exit 2."""


# -- selection (pure) ------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """Epoch milliseconds from epoch-ms digits or ISO-8601; a time without an offset is UTC."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither ISO-8601 (2024-05-01T10:00:00Z) nor epoch milliseconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class Selection:
    """Filters, AND-ed; a repeated option matches any of its values; unset matches all."""

    stages: tuple[str, ...] = ()  # "enrich" also matches "enrich:UserProfile"
    tenants: tuple[str, ...] = ()
    notification_ids: tuple[str, ...] = ()
    error_types: tuple[str, ...] = ()
    error_contains: str | None = None  # case-insensitive, in the error or its history
    source_topics: tuple[str, ...] = ()  # physical names
    since: int | None = None  # failed_at >= since (epoch ms)
    until: int | None = None  # failed_at < until
    partition: int | None = None  # of the dead-letter topic
    offset_from: int | None = None  # inclusive
    offset_to: int | None = None  # inclusive

    def covers(self, partition: int, offset: int) -> bool:
        """Whether a dead-letter position is in the --partition/--offset-* range."""
        return (
            (self.partition is None or partition == self.partition)
            and (self.offset_from is None or offset >= self.offset_from)
            and (self.offset_to is None or offset <= self.offset_to)
        )

    def matches(self, partition: int, offset: int, record: Mapping[str, Any]) -> bool:
        stage = record["stage"]
        failed_at = record["failed_at"]
        return (
            self.covers(partition, offset)
            and (
                not self.stages or any(stage == s or stage.startswith(s + ":") for s in self.stages)
            )
            and (not self.tenants or record.get("tenant_id") in self.tenants)
            and (
                not self.notification_ids or record.get("notification_id") in self.notification_ids
            )
            and (not self.error_types or record["error_type"] in self.error_types)
            and (not self.source_topics or record["source_topic"] in self.source_topics)
            and (self.since is None or failed_at >= self.since)
            and (self.until is None or failed_at < self.until)
            and (self.error_contains is None or self._error_matches(record))
        )

    def _error_matches(self, record: Mapping[str, Any]) -> bool:
        needle = (self.error_contains or "").lower()
        errors = [record["error"], *(record.get("error_history") or [])]
        return any(needle in error.lower() for error in errors)


def describe(partition: int, offset: int, record: Mapping[str, Any], prefix: str = "") -> str:
    """One line of the listing: position, time, stage, tenant, notification, source, error."""
    failed_at = datetime.fromtimestamp(record["failed_at"] / 1000, UTC)
    source = record["source_topic"].removeprefix(prefix)
    error = " ".join(record["error"].split())[:80]
    history = len(record.get("error_history") or [])
    return (
        f"{partition}:{offset}  {failed_at:%Y-%m-%dT%H:%M:%SZ}  {record['stage']}  "
        f"tenant={record.get('tenant_id') or '-'}  "
        f"notification={record.get('notification_id') or '-'}  from={source}  "
        f"{record['error_type']}: {error}" + (f"  [history: {history}]" if history else "")
    )


# -- arguments -------------------------------------------------------------------------------


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streams.replay",
        description="List (default) or re-inject (--apply) records of notifications.dead-letter.",
        epilog="Times are ISO-8601 (UTC unless an offset is given) or epoch milliseconds. "
        "See docs/dead-letters.md.",
    )
    pick = parser.add_argument_group("selection (AND-ed; a repeated option matches any value)")
    pick.add_argument(
        "--stage", action="append", type=_text, default=[], help="'enrich' also: 'enrich:…'"
    )
    pick.add_argument("--tenant", action="append", type=_text, default=[], metavar="TENANT_ID")
    pick.add_argument("--notification-id", action="append", type=_text, default=[], metavar="ID")
    pick.add_argument(
        "--error-type", action="append", type=_text, default=[], help="exception class name"
    )
    pick.add_argument(
        "--error-contains", type=_text, metavar="TEXT", help="in the error or its history, any case"
    )
    pick.add_argument(
        "--source-topic", action="append", type=_text, default=[], metavar="LOGICAL_TOPIC"
    )
    pick.add_argument("--since", type=parse_time, metavar="TIME", help="failed_at >= TIME")
    pick.add_argument("--until", type=parse_time, metavar="TIME", help="failed_at < TIME")
    pick.add_argument("--partition", type=_count(0), help="of the dead-letter topic")
    pick.add_argument("--offset-from", type=_count(0), metavar="OFFSET", help="inclusive")
    pick.add_argument("--offset-to", type=_count(0), metavar="OFFSET", help="inclusive")
    pick.add_argument("--limit", type=_count(1), metavar="N", help="stop after N records")
    act = parser.add_argument_group("action")
    act.add_argument("--apply", action="store_true", help="re-inject (default: dry run)")
    act.add_argument(
        "--to", type=_text, metavar="LOGICAL_TOPIC", help="instead of each record's source topic"
    )
    return parser


def parse_args(
    argv: list[str] | None, settings: Settings, catalog: TopicCatalog
) -> tuple[argparse.Namespace, Selection]:
    """Parsed arguments and the selection; bad arguments exit 2 with argparse's message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.since is not None and args.until is not None and args.since >= args.until:
        parser.error("--since must be before --until")
    if (
        args.offset_from is not None
        and args.offset_to is not None
        and args.offset_from > args.offset_to
    ):
        parser.error("--offset-from must not be after --offset-to")
    if args.to is not None:
        try:
            args.to = catalog.name(args.to)
        except KeyError as exc:
            parser.error(f"--to: {exc.args[0]}")
    selection = Selection(
        stages=tuple(args.stage),
        tenants=tuple(args.tenant),
        notification_ids=tuple(args.notification_id),
        error_types=tuple(args.error_type),
        error_contains=args.error_contains,
        source_topics=tuple(settings.topic(name) for name in args.source_topic),
        since=args.since,
        until=args.until,
        partition=args.partition,
        offset_from=args.offset_from,
        offset_to=args.offset_to,
    )
    return args, selection


# -- Kafka -----------------------------------------------------------------------------------


def dead_letter_ranges(
    consumer: Consumer, topic: str, selection: Selection
) -> list[tuple[int, int, int]]:
    """(partition, first offset, end offset) to read, the ends taken now, before anything."""
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    if metadata.error is not None:
        raise ReplayError(f"cannot read {topic} (provisioned? TOPIC_PREFIX?): {metadata.error}")
    partitions = sorted(metadata.partitions)
    if selection.partition is not None:
        if selection.partition not in partitions:
            raise BadArgument(
                f"--partition {selection.partition}: {topic} has partitions 0-{len(partitions) - 1}"
            )
        partitions = [selection.partition]
    ranges = []
    for partition in partitions:
        low, high = _watermarks(consumer, TopicPartition(topic, partition))
        start = max(low, selection.offset_from or 0)
        end = high if selection.offset_to is None else min(high, selection.offset_to + 1)
        if start < end:
            ranges.append((partition, start, end))
    return ranges


def _watermarks(consumer: Consumer, tp: TopicPartition) -> tuple[int, int]:
    """Low and high offsets; waits for a leader (a topic created a moment ago has none)."""
    deadline = time.monotonic() + READ_IDLE_TIMEOUT_SECONDS
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            return int(low), int(high)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
            if code not in _NO_LEADER_YET or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def read_range(
    consumer: Consumer, topic: str, partition: int, start: int, end: int
) -> Iterator[tuple[int, Message]]:
    """(offset, message) of one partition from `start` up to (excluding) `end`."""
    consumer.assign([TopicPartition(topic, partition, start)])
    position, idle_since = start, time.monotonic()
    while position < end:
        for message in consumer.consume(500, timeout=0.2):
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise ReplayError(f"reading {topic}[{partition}]: {error}")
            offset = message.offset()
            mine = message.partition() == partition  # not a leftover of the previous range
            if error is None and mine and offset is not None and offset < end:
                yield offset, message
        # The position, not the last offset seen: transaction markers leave gaps.
        [now] = consumer.position([TopicPartition(topic, partition)])
        if now.offset is not None and now.offset > position:
            position, idle_since = now.offset, time.monotonic()
        elif time.monotonic() - idle_since > READ_IDLE_TIMEOUT_SECONDS:
            raise ReplayError(f"{topic}[{partition}] stuck at offset {position} (end {end})")


class Replayer:
    """An idempotent acks=all producer; `finish()` waits for every acknowledgement."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(producer_config(settings))
        self.acknowledged = 0
        self.errors: list[str] = []

    def send(
        self,
        topic: str,
        partition: int,
        offset: int,
        record: Mapping[str, Any],
        trace: Headers,
    ) -> None:
        """Produce a dead letter's original key and value, marked with where it came from."""
        position = f"{partition}:{offset}"

        def delivered(err: KafkaError | None, _message: Message) -> None:
            if err is None:
                self.acknowledged += 1
            else:
                self.errors.append(f"dead-letter {position} -> {topic}: {err}")

        # A keyless record goes back to its partition (ticks name theirs); keys are hashed.
        keyless = record["key"] is None and topic == record["source_topic"]
        headers: Headers = [(REPLAY_HEADER, f"dead-letter:{position}".encode()), *trace]
        while True:
            try:
                self._producer.produce(
                    topic,
                    key=record["key"],
                    value=record["value"],
                    headers=headers,
                    partition=record["source_partition"] if keyless else ANY_PARTITION,
                    on_delivery=delivered,
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(1)
        self._producer.poll(0)

    def finish(self) -> list[str]:
        """Wait for every acknowledgement; what failed."""
        remaining = self._producer.flush(ACK_TIMEOUT_SECONDS)
        late = [f"{remaining} not acknowledged within {ACK_TIMEOUT_SECONDS:.0f}s"]
        return self.errors + (late if remaining else [])


def _trace_headers(message: Message) -> Headers:
    """The trace context the dead letter carries (a child of the failed message's)."""
    headers = message.headers() or []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k, v) for k, v in items if k in TRACE_HEADERS]


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


@dataclass
class Tally:
    scanned: int = 0
    selected: int = 0
    skipped: int = 0  # selected but without an original value


def selected_letters(
    consumer: Consumer,
    topic: str,
    ranges: list[tuple[int, int, int]],
    codec: Codec,
    selection: Selection,
    tally: Tally,
) -> Iterator[tuple[int, int, Message, dict[str, Any]]]:
    """(partition, offset, message, record) of each selected dead letter that can be replayed."""
    for partition, start, end in ranges:
        for offset, message in read_range(consumer, topic, partition, start, end):
            tally.scanned += 1
            try:
                record = codec.decode(message.value() or b"", "DeadLetter")
            except RegistryUnavailableError:
                raise
            except DecodeError as exc:
                _warn(f"dead-letter {partition}:{offset} is not a DeadLetter ({exc}); skipped")
                continue
            if not selection.matches(partition, offset, record):
                continue
            if record["value"] is None:
                _warn(f"dead-letter {partition}:{offset} has no original value; skipped")
                tally.skipped += 1
                continue
            tally.selected += 1
            yield partition, offset, message, record


def run(args: argparse.Namespace, selection: Selection, settings: Settings) -> int:
    topic = settings.topic(DEAD_LETTER_TOPIC)
    codec = build_codec(settings.schema_registry_url)
    consumer = Consumer(consumer_config(settings, f"notifications-replay-{uuid.uuid4().hex}"))
    tally, errors = Tally(), []
    try:
        ranges = dead_letter_ranges(consumer, topic, selection)  # before anything is produced
        replayer = Replayer(settings) if args.apply else None
        try:
            for partition, offset, message, record in selected_letters(
                consumer, topic, ranges, codec, selection, tally
            ):
                print(describe(partition, offset, record, settings.topic_prefix))
                if replayer is not None:
                    destination = args.to or record["source_topic"]
                    replayer.send(destination, partition, offset, record, _trace_headers(message))
                if tally.selected == args.limit:
                    print(
                        f"--limit reached at dead-letter {partition}:{offset}; to continue: "
                        f"--partition {partition} --offset-from {offset + 1}, then later partitions"
                    )
                    break
        except (ReplayError, KafkaException, RegistryUnavailableError) as exc:
            errors.append(str(exc))  # stop reading, but wait for what was already produced
    finally:
        consumer.close()
    skipped = f", {tally.skipped} skipped (no original value)" if tally.skipped else ""
    print(f"scanned {tally.scanned} dead letters: {tally.selected} selected{skipped}")
    if replayer is None:
        print("dry run: nothing produced (add --apply to replay)")
    else:
        errors += replayer.finish()
        print(f"replayed {replayer.acknowledged} of {tally.selected}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    args, selection = parse_args(argv, settings, TopicCatalog.load(settings))
    try:
        return run(args, selection, settings)
    except BadArgument as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ReplayError, KafkaException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
