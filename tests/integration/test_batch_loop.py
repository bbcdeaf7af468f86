"""The batched confluent-kafka stage loop (streams/runtime/batch_loop.py, issue 13) on the real
broker: a poison message in the middle of a batch, order per key within and across batches,
a transient error mid-batch, table state across a restart, and a lone message on an idle loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from core.settings import Settings
from streams.runtime.batch_loop import (
    BatchLoop,
    ChangelogTable,
    Context,
    Output,
    TransientError,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture
def names(kafka_bootstrap: str) -> Iterator[dict[str, str]]:
    prefix = f"bl{uuid.uuid4().hex[:8]}."
    names = {
        role: prefix + role for role in ("source", "target", "dead-letter", "counts-changelog")
    }
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    new = [
        NewTopic(
            name,
            PARTITIONS,
            1,
            config={"cleanup.policy": "compact"} if role.endswith("changelog") else {},
        )
        for role, name in names.items()
    ]
    for future in admin.create_topics(new).values():
        future.result(30)
    yield names
    for future in admin.delete_topics(list(names.values())).values():
        future.result(30)


def producer(bootstrap: str) -> Producer:
    return Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
    )


def produce_all(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    out = producer(bootstrap)
    for key, value in items:
        out.produce(topic, value, key)
        out.poll(0)
    assert out.flush(30) == 0


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Message]:
    """Every message of `topic`, once `expected` of them are there (fails on timeout)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:6]}"}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(500, 0.2) if m.error() is None]
        messages += [m for m in consumer.consume(500, 1.0) if m.error() is None]  # any extra
    finally:
        consumer.close()
    assert len(messages) >= expected, f"{len(messages)} of {expected} on {topic}"
    return messages


def make_loop(bootstrap: str, names: dict[str, str], handler, *, tables=(), **kw) -> BatchLoop:
    def dead_letter(message: Message, error: BaseException) -> Output:
        return Output(
            names["dead-letter"], message.key(), message.value(), [("error", str(error).encode())]
        )

    return BatchLoop(
        name="test",
        settings=Settings(kafka_bootstrap_servers=bootstrap),
        group_id=f"{names['source']}-group",
        topics=[names["source"]],
        handler=handler,
        dead_letter=dead_letter,
        tables=tables,
        **kw,
    )


@asynccontextmanager
async def running(loop: BatchLoop) -> AsyncIterator[BatchLoop]:
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(loop.ready.wait(), 60)
        yield loop
    finally:
        loop.stop()
        await asyncio.wait_for(task, 60)


async def wait_handled(loop: BatchLoop, count: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while loop.handled < count:
        assert time.monotonic() < deadline, f"handled {loop.handled} of {count}"
        await asyncio.sleep(0.05)


def by_key(messages: list[Message]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        out[message.key()].append(message.value())
    return out


async def test_a_poison_message_is_dead_lettered_and_the_rest_of_its_batch_delivered(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    items = [(b"k%d" % (i % 5), b"m%03d" % i) for i in range(200)]
    items[101] = (b"k1", b"poison")

    async def handle(message: Message, out: Context) -> None:
        out.produce(names["target"], message.key(), message.value().upper())
        if message.value() == b"poison":
            raise ValueError("cannot handle poison")  # after staging: nothing of it may leak

    produce_all(kafka_bootstrap, names["source"], items)
    loop = make_loop(kafka_bootstrap, names, handle, max_batch=64)
    async with running(loop):
        await wait_handled(loop, 200)
    delivered = read_all(kafka_bootstrap, names["target"], 199)
    parked = read_all(kafka_bootstrap, names["dead-letter"], 1)
    assert len(delivered) == 199 and b"POISON" not in [m.value() for m in delivered]
    assert [(m.key(), m.value()) for m in parked] == [(b"k1", b"poison")]
    assert dict(parked[0].headers())["error"] == b"cannot handle poison"
    assert loop.dead_lettered == 1


async def test_order_per_key_holds_within_and_across_batches(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    items = [(b"user%d" % (i % 7), b"%05d" % i) for i in range(3000)]

    async def handle(message: Message, out: Context) -> None:
        out.produce(names["target"], message.key(), message.value())

    produce_all(kafka_bootstrap, names["source"], items)
    loop = make_loop(kafka_bootstrap, names, handle, max_batch=50)  # 60+ batches
    async with running(loop):
        await wait_handled(loop, 3000)
    delivered = by_key(read_all(kafka_bootstrap, names["target"], 3000))
    expected = by_key_items(items)
    assert delivered == expected


def by_key_items(items: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in items:
        out[key].append(value)
    return out


async def test_a_transient_error_mid_batch_retries_that_message_and_loses_or_repeats_nothing(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    items = [(b"k%d" % (i % 3), b"%04d" % i) for i in range(300)]
    failures = {b"0150": 2}  # the registry is "down" twice for this one

    async def handle(message: Message, out: Context) -> None:
        out.produce(names["target"], message.key(), message.value())
        if failures.get(message.value(), 0) > 0:
            failures[message.value()] -= 1
            raise TransientError("schema registry unreachable")

    produce_all(kafka_bootstrap, names["source"], items)
    loop = make_loop(kafka_bootstrap, names, handle, max_batch=100)
    async with running(loop):
        await wait_handled(loop, 300, seconds=90)
    delivered = read_all(kafka_bootstrap, names["target"], 300)
    assert by_key(delivered) == by_key_items(items)  # exactly once each, in order per key
    assert failures == {b"0150": 0}


async def test_table_state_is_restored_from_its_changelog_after_a_restart(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    """A running count per key: the second run continues the first's counts."""

    def counting(table: ChangelogTable):
        async def handle(message: Message, out: Context) -> None:
            partition, key = message.partition(), message.key()
            count = int(table.get(partition, key) or b"0") + 1
            table.put(partition, key, b"%d" % count)
            out.produce(names["target"], key, b"%d" % count)

        return handle

    keys = [b"u%d" % i for i in range(10)]
    produce_all(kafka_bootstrap, names["source"], [(k, b"x") for k in keys * 30])
    first_table = ChangelogTable("counts", names["counts-changelog"])
    first = make_loop(kafka_bootstrap, names, counting(first_table), tables=[first_table])
    async with running(first):
        await wait_handled(first, 300)

    produce_all(kafka_bootstrap, names["source"], [(k, b"x") for k in keys * 20])
    table = ChangelogTable("counts", names["counts-changelog"])
    second = make_loop(kafka_bootstrap, names, counting(table), tables=[table])
    async with running(second):
        assert len(table) == 10  # restored before the first message was handled
        await wait_handled(second, 200)
    counts = by_key(read_all(kafka_bootstrap, names["target"], 500))
    assert {key: values[-1] for key, values in counts.items()} == {k: b"50" for k in keys}
    assert all(values == [b"%d" % n for n in range(1, 51)] for values in counts.values())


async def test_a_lone_message_on_an_idle_loop_is_not_held_back(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    seen: list[float] = []

    async def handle(message: Message, out: Context) -> None:
        seen.append(time.monotonic())
        out.produce(names["target"], message.key(), message.value())

    loop = make_loop(kafka_bootstrap, names, handle)
    async with running(loop):
        await asyncio.sleep(1.0)  # idle
        out = producer(kafka_bootstrap)
        sent = time.monotonic()
        out.produce(names["source"], b"alone", b"k")
        out.flush(10)
        await wait_handled(loop, 1, seconds=10)
    # The loop's own wait for more is 10 ms; the rest is the broker and the fetcher.
    assert seen[0] - sent < 0.5, f"handled {seen[0] - sent:.3f}s after it was produced"


async def test_a_partition_never_committed_starts_where_the_other_group_stopped(
    kafka_bootstrap: str, names: dict[str, str]
) -> None:
    """A stage moved off a Faust agent continues at the agent's group's offsets instead of
    re-reading its topic from the start (start_from_group)."""
    produce_all(kafka_bootstrap, names["source"], [(b"k%d" % i, b"old%02d" % i) for i in range(40)])
    # The "Faust" group had handled the first 40: commit their ends.
    watermarks = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "wm"})
    ends = [
        TopicPartition(
            names["source"],
            p,
            watermarks.get_watermark_offsets(TopicPartition(names["source"], p), 10)[1],
        )
        for p in range(PARTITIONS)
    ]
    watermarks.close()
    before = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": f"{names['source']}-faust"}
    )
    before.commit(offsets=ends, asynchronous=False)
    before.close()
    produce_all(kafka_bootstrap, names["source"], [(b"k%d" % i, b"new%02d" % i) for i in range(20)])

    seen: list[bytes] = []
    rebalances: list[int] = []

    async def handle(message: Message, out: Context) -> None:
        seen.append(message.value())

    loop = make_loop(
        kafka_bootstrap,
        names,
        handle,
        start_from_group=f"{names['source']}-faust",
        on_rebalance=lambda: rebalances.append(1),
    )
    async with running(loop):
        await wait_handled(loop, 20)
        await asyncio.sleep(1.0)  # anything from before the other group's offsets would show
    assert sorted(seen) == sorted(b"new%02d" % i for i in range(20))
    assert rebalances, "on_rebalance was not called on assignment"

    # Its own commits win from then on: a restart reads nothing again.
    again: list[bytes] = []

    async def handle_again(message: Message, out: Context) -> None:
        again.append(message.value())

    loop = make_loop(
        kafka_bootstrap, names, handle_again, start_from_group=f"{names['source']}-faust"
    )
    async with running(loop):
        await asyncio.sleep(2.0)
    assert again == []
