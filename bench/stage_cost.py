"""CPU cost of one relay hop (consume -> decode Avro -> change -> encode -> produce), per variant.

    python bench/stage_cost.py --bootstrap 127.0.0.1:9092 --count 20000 --runs 3 \
        [--variants a b c d d-raw e] [--broker-pid PID]

The wall-clock rate of a shared 2-core machine says little when other processes load it, so
the figure that matters is CPU time per message of the relay process (time.process_time():
every thread, librdkafka's included), measured from the first message the relay sees to the
last produced message acknowledged by the broker. The wall rate is printed for reference, and
with --broker-pid the broker JVM's CPU over the same window.

One source topic (4 partitions, like the stage topics) is filled once with N Notification
records in the project's single-object Avro encoding; each run relays all N into a fresh
target topic, in a fresh consumer group, in its own child process, and the parent checks that
the target holds N records. Variants:

  a      Faust (FixedApp, aiokafka), `async for event in stream.events()` + `await topic.send`,
         `await asyncio.sleep(0)` per event: the shape of streams/runtime/lane_agents.py today
  b      Faust (FixedApp, aiokafka), `stream.take_events(500, within=0.01)` + `topic.send_soon`,
         the batch's send futures gathered before the next batch
  c      as b on faust.App with the confluent transport (`confluent://`)
  d      plain asyncio + confluent-kafka: consume(500) batches, the project codec
         (validate + encode, decode with header checks), produce per record, poll(0), commit a
         batch's offsets once all its records are acknowledged
  d-raw  as d with fastavro schemaless reader/writer on the parsed schema (no validation)
  e      as d-raw on uvloop, orjson for the JSON field (needs uvloop/orjson importable, e.g.
         `pip install --target var/spike-extra uvloop orjson`; var/spike-extra is on sys.path)

  r      streams/runtime/batch_loop.py's BatchLoop (the runtime the stages move onto) with
         the project codec: d's loop plus per-message dead-letter staging and table hooks
  r-table  r plus one ChangelogTable write per message (a "delivered" mark produced to a
         compacted changelog), as the deliver stage makes

The "change" in every variant: attempt += 1 and data_json parsed, given a key, dumped again
(stages parse data_json; it is where orjson could matter). No trace headers, no tables, no
status events: this is the floor of one hop, not a stage.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXTRA = REPO / "var" / "spike-extra"
if EXTRA.is_dir():
    sys.path.append(str(EXTRA))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from core.kafka_auth import faust_credentials  # noqa: E402
from core.kafka_clients import client_config  # noqa: E402
from core.settings import Settings  # noqa: E402
from schemas import SchemaCatalog, build_codec  # noqa: E402

SCHEMA = "io.notifications.Notification"
PARTITIONS = 4
BATCH = 500
WITHIN = 0.01
VARIANTS = ("a", "b", "c", "d", "d-raw", "e", "r", "r-table")


def _kafka(bootstrap: str, options: dict[str, Any]) -> dict[str, Any]:
    """confluent-kafka options for `bootstrap` with the environment's KAFKA_SECURITY_PROTOCOL,
    KAFKA_SASL_* and KAFKA_SSL_* settings (core.kafka_clients.client_config)."""
    return client_config(Settings(kafka_bootstrap_servers=bootstrap), **options)


# -- shared helpers -------------------------------------------------------------------------


def notification(i: int) -> dict[str, Any]:
    """A rendered in-app notification, as deliver.in_app sees it."""
    user = f"user{i % 500}"
    return {
        "notification_id": f"n-{uuid.uuid4()}",
        "request_id": str(uuid.uuid4()),
        "tenant_id": "bench",
        "batch_id": None,
        "occurred_at": int(time.time() * 1000),
        "channel": "in_app",
        "recipient": {"user_id": user, "email": f"{user}@example.com", "locale": "en"},
        "template_id": "order-ready",
        "content": {"subject": "Hi {{ name }}", "text": "Item {{ n }} is ready", "html": None},
        "data_json": json.dumps({"name": user, "n": i, "order": {"id": f"o{i}", "total": 42.5}}),
        "priority": "normal",
        "metadata": {"source": "bench", "campaign": "spike"},
        "address": user,
        "locale": "en",
        "timezone": "Europe/Berlin",
        "profile_source": "profile",
        "rendered": {"subject": f"Hi {user}", "text": f"Item {i} is ready", "html": None},
        "attempt": 0,
        "category": None,
        "template_version": 3,
        "send_at": None,
        "digest_id": None,
        "lane": "transactional",
        "provider_overrides": {},
        "fallback_channels": [],
        "not_before": None,
        "delivery_log": [],
    }


def change(record: dict[str, Any], loads: Callable[[Any], Any], dumps: Callable[..., Any]) -> None:
    record["attempt"] += 1
    data = loads(record["data_json"])
    data["hop"] = record["attempt"]
    out = dumps(data)
    record["data_json"] = out.decode() if isinstance(out, bytes) else out


def broker_cpu(pid: int | None) -> float | None:
    """utime + stime of the broker JVM, seconds (Linux /proc)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Window:
    """CPU and wall time from the first batch handled to the last message acknowledged."""

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self.started = False
        self.excluded = 0  # messages seen before the window opened (the first batch)

    def start(self, first_batch: int) -> None:
        self.started = True
        self.excluded = first_batch
        self.cpu0 = time.process_time()
        self.wall0 = time.monotonic()
        self.broker0 = broker_cpu(self.broker_pid)

    def result(self, count: int) -> dict[str, Any]:
        cpu = time.process_time() - self.cpu0
        wall = time.monotonic() - self.wall0
        broker1 = broker_cpu(self.broker_pid)
        n = count - self.excluded
        return {
            "messages": n,
            "cpu_s": cpu,
            "wall_s": wall,
            "broker_cpu_s": (
                None if self.broker0 is None or broker1 is None else broker1 - self.broker0
            ),
            "loadavg": os.getloadavg()[0],
        }


PROFILER: Any = None  # --profile: cProfile of the relay's main thread, dumped with the result


def write_result(path: str, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result))
    if PROFILER is not None:
        import pstats

        PROFILER.disable()
        with open(path + ".prof.txt", "w") as out:
            pstats.Stats(PROFILER, stream=out).sort_stats("tottime").print_stats(40)


# -- Faust variants (a, b, c) ---------------------------------------------------------------


def run_faust(args: argparse.Namespace) -> None:
    import faust
    from faust.serializers import codecs

    from schemas import register_faust_codecs
    from schemas.faust_codec import codec_name
    from streams.runtime.faust_fixes import FixedApp

    catalog = SchemaCatalog.load()
    codec = build_codec(None, catalog)
    register_faust_codecs(codec, catalog)

    class Utf8(codecs.Codec):  # streams/runtime/app.py's key codec
        def _dumps(self, obj: Any) -> bytes:
            return obj.encode() if isinstance(obj, str) else bytes(obj)

        def _loads(self, s: bytes) -> str:
            return s.decode("utf-8", errors="replace")

    codecs.register("utf8", Utf8())
    confluent = args.variant == "c"
    app_cls: Any = faust.App if confluent else FixedApp
    extra: dict[str, Any] = (
        {} if confluent else {"TableManager": "streams.runtime.faust_fixes:FixedTableManager"}
    )
    # The settings of streams/runtime/app.py.
    app = app_cls(
        args.group,
        broker=f"{'confluent' if confluent else 'kafka'}://{args.bootstrap}",
        broker_credentials=faust_credentials(Settings(kafka_bootstrap_servers=args.bootstrap)),
        store="memory://",
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=PARTITIONS,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        broker_commit_interval=1.0,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        stream_buffer_maxsize=1024,
        **extra,
    )
    source = app.topic(
        args.source,
        partitions=PARTITIONS,
        key_type=str,
        key_serializer="utf8",
        value_serializer="raw",
        internal=False,
    )
    sink = app.topic(
        args.target,
        partitions=PARTITIONS,
        key_type=str,
        key_serializer="utf8",
        value_serializer=codec_name(SCHEMA),
        internal=False,
    )
    window = Window(args.broker_pid)
    state = {"count": 0}

    async def finish() -> None:
        await app.producer.flush()  # every send acknowledged
        write_result(args.result, window.result(state["count"]))
        os._exit(0)

    if args.variant == "a":

        async def relay(stream: Any) -> None:
            async for event in stream.events():
                record = codec.decode(bytes(event.value), SCHEMA)
                change(record, json.loads, json.dumps)
                await sink.send(key=event.key, value=record)
                state["count"] += 1
                if not window.started:
                    window.start(1)
                if state["count"] >= args.count:
                    await finish()
                await asyncio.sleep(0)  # as streams/runtime/lane_agents.py

    else:

        async def relay(stream: Any) -> None:
            async for events in stream.take_events(BATCH, within=WITHIN):
                futures = []
                for event in events:
                    record = codec.decode(bytes(event.value), SCHEMA)
                    change(record, json.loads, json.dumps)
                    futures.append(sink.send_soon(key=event.key, value=record))
                # Each send acknowledged before the batch is acked (and so committed). Also
                # needed to finish: producer.flush() returns while the buffer's last message
                # is still being handed to aiokafka (its size is 0 by then): 19,999 of 20,000.
                await asyncio.gather(*futures)
                state["count"] += len(events)
                if not window.started:
                    window.start(len(events))
                if state["count"] >= args.count:
                    await finish()

    app.agent(source, name="relay", concurrency=1)(relay)
    worker = faust.Worker(app, loglevel="info", quiet=True)
    worker.execute_from_commandline()


# -- plain confluent-kafka variants (d, d-raw, e) -------------------------------------------


class RawAvro:
    """fastavro schemaless reader/writer on the parsed schema, single-object framing."""

    def __init__(self) -> None:
        from fastavro import schemaless_reader, schemaless_writer

        entry = SchemaCatalog.load().entry(SCHEMA)
        self.header = b"\xc3\x01" + entry.fingerprint
        self.parsed = entry.parsed
        self.reader = schemaless_reader
        self.writer = schemaless_writer

    def decode(self, data: bytes, _name: str) -> dict[str, Any]:
        if data[:10] != self.header:
            raise ValueError("not a Notification in single-object framing")
        buf = io.BytesIO(data)
        buf.seek(10)
        record: dict[str, Any] = self.reader(buf, self.parsed, None)  # type: ignore[assignment]
        return record

    def encode(self, _name: str, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        self.writer(buf, self.parsed, record)
        return buf.getvalue()


def run_batch_loop(args: argparse.Namespace) -> None:
    """Variants r and r-table: the relay as a BatchLoop handler."""
    from streams.runtime.batch_loop import BatchLoop, ChangelogTable, Context, Output

    codec = build_codec(None, SchemaCatalog.load())
    tables: list[ChangelogTable] = []
    if args.variant == "r-table":
        changelog = f"{args.target}.changelog"
        admin = AdminClient(_kafka(args.bootstrap, {}))
        for future in admin.create_topics(
            [NewTopic(changelog, PARTITIONS, 1, config={"cleanup.policy": "compact"})]
        ).values():
            future.result()
        tables.append(ChangelogTable("delivered", changelog))
    window = Window(args.broker_pid)
    seen = 0

    async def relay(message: Any, out: Context) -> None:
        nonlocal seen
        seen += 1
        if not window.started:
            window.start(1)
        record = codec.decode(message.value(), SCHEMA)
        change(record, json.loads, json.dumps)
        if tables:
            tables[0].put(message.partition(), record["notification_id"].encode(), b"1")
        out.produce(args.target, message.key(), codec.encode(SCHEMA, record))
        if seen >= args.count:
            loop.stop()

    def dead_letter(message: Any, error: BaseException) -> Output:
        raise SystemExit(f"relay failed: {error!r}")

    loop = BatchLoop(
        name="bench",
        settings=Settings(kafka_bootstrap_servers=args.bootstrap),
        group_id=args.group,
        topics=[args.source],
        handler=relay,
        dead_letter=dead_letter,
        tables=tables,
        max_batch=BATCH,
        within=WITHIN,
    )
    asyncio.run(loop.run())  # returns once every output is acknowledged and committed
    write_result(args.result, window.result(seen))


def run_plain(args: argparse.Namespace) -> None:
    if args.variant == "e":
        import orjson
        import uvloop

        loads, dumps = orjson.loads, orjson.dumps
        uvloop.install()
    else:
        loads, dumps = json.loads, json.dumps
    codec: Any = build_codec(None, SchemaCatalog.load()) if args.variant == "d" else RawAvro()
    asyncio.run(plain_relay(args, codec, loads, dumps))


class BatchAcks:
    """Counts a batch's outstanding deliveries; its offsets are committed once they reach 0."""

    __slots__ = ("failed", "offsets", "pending")

    def __init__(self, offsets: dict[tuple[str, int], int], pending: int) -> None:
        self.offsets = offsets
        self.pending = pending
        self.failed: str | None = None

    def delivered(self, err: Any, _msg: Any) -> None:
        self.pending -= 1
        if err is not None:
            self.failed = str(err)


async def plain_relay(
    args: argparse.Namespace, codec: Any, loads: Callable[..., Any], dumps: Callable[..., Any]
) -> None:
    consumer = Consumer(
        _kafka(
            args.bootstrap,
            {
                "group.id": args.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )
    producer = Producer(
        _kafka(
            args.bootstrap,
            {
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                "linger.ms": 5,
            },
        )
    )
    consumer.subscribe([args.source])
    window = Window(args.broker_pid)
    inflight: deque[BatchAcks] = deque()
    count = 0
    target = args.target

    def commit_done() -> None:
        while inflight and inflight[0].pending == 0:
            batch = inflight.popleft()
            if batch.failed:
                raise SystemExit(f"produce failed: {batch.failed}")
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()],
                asynchronous=True,
            )

    while count < args.count:
        messages = consumer.consume(BATCH, 0)  # non-blocking: whatever is fetched already
        if not messages:
            producer.poll(0)
            commit_done()
            # Nothing buffered: wait in a thread so the loop stays free.
            messages = await asyncio.to_thread(consumer.consume, BATCH, WITHIN)
            if not messages:
                continue
        offsets: dict[tuple[str, int], int] = {}
        batch = BatchAcks(offsets, len(messages))
        produce = producer.produce
        for message in messages:
            if message.error():
                batch.pending -= 1
                continue
            record = codec.decode(message.value(), SCHEMA)
            change(record, loads, dumps)
            value = codec.encode(SCHEMA, record)
            produce(target, value, message.key(), on_delivery=batch.delivered)
            tp = (message.topic() or "", message.partition() or 0)  # set on a real message
            offsets[tp] = (message.offset() or 0) + 1
        inflight.append(batch)
        count += len(messages)
        if not window.started:  # the window opens once the first batch is handled
            window.start(len(messages))
        producer.poll(0)
        commit_done()
        await asyncio.sleep(0)
    producer.flush(60)
    commit_done()
    write_result(args.result, window.result(count))
    consumer.close()


# -- parent: topics, prefill, runs, table ---------------------------------------------------


def create_topics(admin: AdminClient, names: list[str]) -> None:
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result()


def prefill(bootstrap: str, topic: str, count: int) -> dict[str, float]:
    """Fill `topic` with `count` encoded Notifications; the cost of build+encode+produce."""
    codec = build_codec(None, SchemaCatalog.load())
    records = [notification(i) for i in range(count)]
    producer = Producer(
        _kafka(
            bootstrap,
            {
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                "linger.ms": 5,
            },
        )
    )
    cpu0 = time.process_time()
    size = 0
    for i, record in enumerate(records):
        value = codec.encode(SCHEMA, record)
        size += len(value)
        producer.produce(topic, value, f"bench:{record['recipient']['user_id']}")
        if i % 500 == 0:
            producer.poll(0)
    producer.flush(60)
    return {"encode_produce_us": (time.process_time() - cpu0) / count * 1e6, "bytes": size / count}


def codec_costs(rounds: int = 5000) -> dict[str, float]:
    """In-process µs per record of each codec step, no Kafka."""
    codec: Any = build_codec(None, SchemaCatalog.load())
    raw = RawAvro()
    from schemas.catalog import validate_entry

    entry = SchemaCatalog.load().entry(SCHEMA)
    records = [notification(i) for i in range(rounds)]
    blobs = [codec.encode(SCHEMA, r) for r in records]

    def per(fn: Callable[[int], Any]) -> float:
        t0 = time.process_time()
        for i in range(rounds):
            fn(i)
        return (time.process_time() - t0) / rounds * 1e6

    out = {
        "codec.decode": per(lambda i: codec.decode(blobs[i], SCHEMA)),
        "codec.encode (validate+write)": per(lambda i: codec.encode(SCHEMA, records[i])),
        "validate_entry alone": per(lambda i: validate_entry(entry, records[i])),
        "fastavro read (reused schema)": per(lambda i: raw.decode(blobs[i], SCHEMA)),
        "fastavro write (reused schema)": per(lambda i: raw.encode(SCHEMA, records[i])),
        "json loads+dumps data_json": per(
            lambda i: json.dumps(json.loads(records[i]["data_json"]))
        ),
    }
    try:
        import orjson

        out["orjson loads+dumps data_json"] = per(
            lambda i: orjson.dumps(orjson.loads(records[i]["data_json"]))
        )
    except ImportError:
        pass
    return out


@dataclass
class Run:
    variant: str
    index: int
    result: dict[str, Any] | None
    child_cpu_s: float
    produced: int
    error: str | None = None

    @property
    def cpu_us(self) -> float | None:
        return self.result["cpu_s"] / self.result["messages"] * 1e6 if self.result else None

    @property
    def rate(self) -> float | None:
        return self.result["messages"] / self.result["wall_s"] if self.result else None

    @property
    def broker_us(self) -> float | None:
        if not self.result or self.result.get("broker_cpu_s") is None:
            return None
        return self.result["broker_cpu_s"] / self.result["messages"] * 1e6


def high_water_total(bootstrap: str, topic: str) -> int:
    consumer = Consumer(_kafka(bootstrap, {"group.id": f"hw-{uuid.uuid4()}"}))
    total = 0
    for p in range(PARTITIONS):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        total += high - low
    consumer.close()
    return total


def run_one(args: argparse.Namespace, admin: AdminClient, source: str, variant: str, i: int) -> Run:
    tag = uuid.uuid4().hex[:6]
    target = f"spike.{tag}.out"
    create_topics(admin, [target])
    log_dir = REPO / "var" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    result_path = log_dir / f"stage-cost-{variant}-{i}.json"
    result_path.unlink(missing_ok=True)
    log = log_dir / f"stage-cost-{variant}-{i}.log"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "relay",
        "--variant", variant,
        "--bootstrap", args.bootstrap,
        "--source", source,
        "--target", target,
        "--group", f"spike-{variant}-{tag}",
        "--count", str(args.count),
        "--result", str(result_path),
    ]  # fmt: skip
    if args.broker_pid:
        cmd += ["--broker-pid", str(args.broker_pid)]
    if args.profile:
        cmd.append("--profile")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    error = None
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            error = f"timed out after {args.timeout}s"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    if result is None and error is None:
        error = f"exit {proc.returncode}, no result"
    if error:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        error = f"{error}; see {log.relative_to(REPO)}: {' | '.join(tail)[:300]}"
    produced = high_water_total(args.bootstrap, target)
    admin.delete_topics([target] + ([f"{target}.changelog"] if variant == "r-table" else []))
    if result is not None and produced != args.count:
        error = f"target holds {produced}, expected {args.count}"
    return Run(variant, i, result, child_cpu, produced, error)


def summary(runs: list[Run]) -> list[str]:
    lines = [
        "| variant | run | CPU µs/msg (relay) | broker CPU µs/msg | msg/s (wall) | "
        "relay CPU incl. start-up s | load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        if run.result is None or run.error:
            lines.append(f"| {run.variant} | {run.index} | error: {run.error} | | | | |")
            continue
        broker = f"{run.broker_us:.0f}" if run.broker_us is not None else "-"
        lines.append(
            f"| {run.variant} | {run.index} | {run.cpu_us:.0f} | {broker} | {run.rate:.0f} | "
            f"{run.child_cpu_s:.1f} | {run.result['loadavg']:.1f} |"
        )
    lines += ["", "| variant | median CPU µs/msg | median msg/s | hops/s per core at that cost |"]
    lines.append("| --- | ---: | ---: | ---: |")
    for variant in dict.fromkeys(r.variant for r in runs):
        ok = [r for r in runs if r.variant == variant and r.result and not r.error]
        if not ok:
            lines.append(f"| {variant} | failed | | |")
            continue
        cpu = statistics.median(r.cpu_us or 0 for r in ok)
        rate = statistics.median(r.rate or 0 for r in ok)
        lines.append(f"| {variant} | {cpu:.0f} | {rate:.0f} | {1e6 / cpu:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command")
    relay = sub.add_parser("relay", help="one run of one variant (the parent starts these)")
    relay.add_argument("--variant", choices=VARIANTS, required=True)
    for name in ("--bootstrap", "--source", "--target", "--group", "--result"):
        relay.add_argument(name, required=True)
    relay.add_argument("--count", type=int, required=True)
    relay.add_argument("--broker-pid", type=int)
    relay.add_argument("--profile", action="store_true", help="cProfile (slows the relay)")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--broker-pid", type=int, help="the broker JVM, to report its CPU too")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--profile", action="store_true", help="cProfile each relay (slower)")
    args = parser.parse_args()
    if args.command == "relay":
        if args.profile:
            import cProfile

            global PROFILER
            PROFILER = cProfile.Profile()
            PROFILER.enable()
        if args.variant in ("a", "b", "c"):
            run_faust(args)
        elif args.variant.startswith("r"):
            run_batch_loop(args)
        else:
            run_plain(args)
        return

    print("codec, in process, µs per record:")
    for name, us in codec_costs().items():
        print(f"  {name:<34} {us:7.1f}")
    admin = AdminClient(_kafka(args.bootstrap, {}))
    source = f"spike.{uuid.uuid4().hex[:6]}.in"
    create_topics(admin, [source])
    filled = prefill(args.bootstrap, source, args.count)
    print(
        f"prefill: {args.count} records, {filled['bytes']:.0f} bytes each, "
        f"encode+produce {filled['encode_produce_us']:.0f} µs CPU each"
    )
    runs: list[Run] = []
    for i in range(1, args.runs + 1):  # interleaved, so load drift hits every variant alike
        for variant in args.variants:
            run = run_one(args, admin, source, variant, i)
            runs.append(run)
            print(
                f"  {variant} run {i}: "
                + (run.error or f"{run.cpu_us:.0f} µs CPU/msg, {run.rate:.0f} msg/s"),
                flush=True,
            )
    admin.delete_topics([source])
    print()
    print("\n".join(summary(runs)))
    print(f"\n{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
