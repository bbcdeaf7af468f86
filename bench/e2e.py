"""End-to-end benchmark: N in-app notifications through all six stages on the local broker.

    python bench/e2e.py --count 2000 [--workers 1 2]     (make bench)

Prints throughput and latency percentiles (request occurred_at -> final status), side by
side with a baseline measured in the same run: the same number of hops done by a bare
confluent-kafka consume -> produce loop with no processing, which is what the broker and
client alone cost on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import (  # noqa: E402
    Consumer,
    ConsumerGroupTopicPartitions,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # noqa: E402

from core.catalog import TopicCatalog  # noqa: E402
from core.ids import notification_id  # noqa: E402
from core.kafka_clients import client_config, producer_config  # noqa: E402
from core.provision import drop_prefixed, provision  # noqa: E402
from core.settings import Settings  # noqa: E402
from schemas import SchemaCatalog, build_codec  # noqa: E402

STAGE_HOPS = 5  # requests -> accepted -> enriched -> rendered -> deliver.in_app -> status


def _kafka(bootstrap: str, options: dict[str, Any]) -> dict[str, Any]:
    """confluent-kafka options for `bootstrap` with the environment's KAFKA_SECURITY_PROTOCOL,
    KAFKA_SASL_* and KAFKA_SSL_* settings (core.kafka_clients.client_config)."""
    return client_config(Settings(kafka_bootstrap_servers=bootstrap), **options)


@dataclass
class Result:
    name: str
    count: int
    seconds: float
    latencies_ms: list[float]
    # topic (without prefix) -> messages written during the run; and the topics the
    # workers' consumer group read (committed offsets on)
    written: dict[str, int] | None = None
    consumed_topics: set[str] | None = None

    def row(self) -> str:
        q = statistics.quantiles(self.latencies_ms, n=100)
        return (
            f"{self.name:<28} {self.count:>7} {self.count / self.seconds:>10.0f} "
            f"{q[49]:>9.1f} {q[94]:>9.1f} {q[98]:>9.1f}"
        )


def now_ms() -> int:
    return int(time.time() * 1000)


def start_workers(
    env: dict[str, str], workers: int, log_dir: Path
) -> list[subprocess.Popen[bytes]]:
    """Start the workers and wait until every one has joined and recovered."""
    logs = [log_dir / f"bench-worker-{i}.log" for i in range(workers)]
    procs = []
    for log in logs:
        log.write_bytes(b"")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "streams", "worker", "-l", "info"],
                cwd=REPO,
                env=env,
                stdout=log.open("ab"),
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + 180
    # A worker that joins later makes the others rebalance: wait for the last "Ready".
    while time.monotonic() < deadline:
        if all(b"Worker]: Ready" in log.read_bytes() for log in logs):
            return procs
        if any(proc.poll() is not None for proc in procs):
            break
        time.sleep(0.5)
    for proc in procs:
        proc.terminate()
    raise SystemExit(f"workers did not become ready; see {log_dir}/bench-worker-*.log")


def run_pipeline(bootstrap: str, count: int, log_dir: Path, workers: int = 1) -> Result:
    settings = Settings(
        kafka_bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}."
    )
    provision(settings)
    topics = TopicCatalog.load(settings)
    codec = build_codec(None, SchemaCatalog.load())
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": settings.topic_prefix,
        "LOG_LEVEL": "WARNING",
    }
    procs = start_workers(env, workers, log_dir)
    worker = procs[0]
    try:
        consumer = Consumer(
            _kafka(
                bootstrap,
                {
                    "group.id": f"bench-{uuid.uuid4()}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                },
            )
        )
        consumer.subscribe([topics.name("notifications.status")])
        # Warm-up: one notification through, so worker start-up is not measured.
        _send(settings, topics, codec, 1, "warmup")
        _await_final(consumer, codec, 1, timeout=180, worker=worker)
        before = _high_watermarks(bootstrap, settings.topic_prefix)
        started = time.monotonic()
        expected = _send(settings, topics, codec, count, "bench")
        latencies = _await_final(consumer, codec, count, timeout=600, ids=expected, worker=worker)
        seconds = time.monotonic() - started
        time.sleep(2)  # changelog writes and commits trail the final status by a little
        after = _high_watermarks(bootstrap, settings.topic_prefix)
        consumer.close()
        written = {t: after[t] - before.get(t, 0) for t in after if after[t] > before.get(t, 0)}
        name = f"pipeline ({workers} worker{'s' if workers > 1 else ''})"
        result = Result(name, count, seconds, latencies, written)
        # The Faust agents' group and the status stage's batched loop's.
        result.consumed_topics = set().union(
            *(
                _group_topics(bootstrap, group, settings.topic_prefix)
                for group in (settings.full_app_id, f"{settings.full_app_id}-loop")
            )
        )
        return result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        drop_prefixed(settings)


def _high_watermarks(bootstrap: str, prefix: str) -> dict[str, int]:
    """Messages ever written to each topic of the run (summed over partitions), by logical name.

    One ListOffsets request for every partition: the snapshot must be quick, or the timer's
    scheduler ticks written while it runs would be counted against the notifications."""
    admin = AdminClient(_kafka(bootstrap, {}))
    metadata = admin.list_topics(timeout=10).topics
    query = {
        TopicPartition(name, partition): OffsetSpec.latest()
        for name, meta in metadata.items()
        if name.startswith(prefix)
        for partition in meta.partitions
    }
    totals: dict[str, int] = {}
    for tp, future in admin.list_offsets(query, request_timeout=30).items():
        name = tp.topic.removeprefix(prefix)
        totals[name] = totals.get(name, 0) + future.result().offset
    return totals


def _group_topics(bootstrap: str, group: str, prefix: str) -> set[str]:
    """The topics the workers' consumer group has committed offsets on: what they consume."""
    admin = AdminClient(_kafka(bootstrap, {}))
    request = ConsumerGroupTopicPartitions(group)
    [future] = admin.list_consumer_group_offsets([request]).values()
    partitions = future.result(30).topic_partitions
    return {tp.topic.removeprefix(prefix) for tp in partitions if tp.offset >= 0}


def print_message_counts(result: Result) -> None:
    """Per notification: messages written to each topic, and whether the workers read it."""
    if not result.written:
        return
    consumed = result.consumed_topics or set()
    print(f"\nmessages per notification, {result.name} (written; read by the workers?)")
    writes = reads = 0.0
    for topic, n in sorted(result.written.items(), key=lambda item: -item[1]):
        per = n / result.count
        read = topic in consumed
        writes += per
        reads += per if read else 0.0
        print(f"  {topic:<48} {per:>6.2f}  {'read' if read else '-'}")
    print(f"  {'total':<48} {writes:>6.2f} written, {reads:.2f} read by the workers")


def _send(
    settings: Settings, topics: TopicCatalog, codec: object, count: int, tag: str
) -> set[str]:
    producer = Producer(producer_config(settings))
    ids = set()
    for i in range(count):
        request_id = str(uuid.uuid4())
        user = f"{tag}{i % 500}"
        record = {
            "request_id": request_id,
            "tenant_id": "bench",
            "occurred_at": now_ms(),
            "channels": ["in_app"],
            "recipients": [{"user_id": user}],
            "content": {"subject": "Hi {{ name }}", "text": "Item {{ n }} is ready"},
            "data_json": f'{{"name": "{user}", "n": {i}}}',
        }
        producer.produce(
            topics.name("notifications.requests"),
            key=f"bench:{user}",
            value=codec.encode("NotificationRequest", record),
        )  # type: ignore[attr-defined]
        ids.add(notification_id("bench", request_id, user, "in_app"))
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    return ids


def _await_final(
    consumer: Consumer,
    codec: object,
    count: int,
    timeout: float,
    ids: set[str] | None = None,
    worker: subprocess.Popen[bytes] | None = None,
) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + timeout
    while len(latencies) < count:
        if worker is not None and worker.poll() is not None:
            raise SystemExit(f"the worker exited ({worker.returncode}): var/logs/bench-worker.log")
        if time.monotonic() > deadline:
            raise SystemExit(
                f"only {len(latencies)} of {count} notifications finished in {timeout}s"
            )
        for message in consumer.consume(1000, timeout=0.5):
            if message.error():
                continue
            event = codec.decode(message.value(), "StatusEvent")  # type: ignore[attr-defined]
            if event["status"] in {"delivered", "failed"} and (
                ids is None or event["notification_id"] in ids
            ):
                latencies.append(event["occurred_at"] - event["request_occurred_at"])
    return latencies


def run_baseline(bootstrap: str, count: int, payload: bytes) -> Result:
    """The same hops with bare confluent-kafka loops: consume, produce unchanged, commit."""
    prefix = f"bench-base{uuid.uuid4().hex[:6]}."
    names = [f"{prefix}hop{i}" for i in range(STAGE_HOPS + 1)]
    admin = AdminClient(_kafka(bootstrap, {}))
    for future in admin.create_topics([NewTopic(n, 4, 1) for n in names]).values():
        future.result()
    stop = threading.Event()

    def relay(source: str, target: str) -> None:
        consumer = Consumer(
            _kafka(
                bootstrap,
                {
                    "group.id": f"{prefix}{source}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": True,
                },
            )
        )
        producer = Producer(_kafka(bootstrap, {"enable.idempotence": True, "linger.ms": 5}))
        consumer.subscribe([source])
        while not stop.is_set():
            for message in consumer.consume(500, timeout=0.2):
                if not message.error():
                    producer.produce(target, key=message.key(), value=message.value())
            producer.poll(0)
        producer.flush(10)
        consumer.close()

    threads = [
        threading.Thread(target=relay, args=(names[i], names[i + 1]), daemon=True)
        for i in range(STAGE_HOPS)
    ]
    for thread in threads:
        thread.start()
    sink = Consumer(
        _kafka(
            bootstrap,
            {
                "group.id": f"{prefix}sink",
                "auto.offset.reset": "earliest",
            },
        )
    )
    sink.subscribe([names[-1]])
    time.sleep(3)  # let the relays join their groups
    producer = Producer(_kafka(bootstrap, {"enable.idempotence": True, "linger.ms": 5}))
    started = time.monotonic()
    for i in range(count):
        producer.produce(names[0], key=f"k{i % 500}", value=struct.pack(">q", now_ms()) + payload)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    latencies: list[float] = []
    deadline = time.monotonic() + 300
    while len(latencies) < count and time.monotonic() < deadline:
        for message in sink.consume(1000, timeout=0.5):
            if not message.error():
                latencies.append(now_ms() - struct.unpack(">q", message.value()[:8])[0])
    seconds = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(15)
    sink.close()
    admin.delete_topics(names)
    return Result(f"baseline ({STAGE_HOPS} bare relays)", len(latencies), seconds, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="worker process counts to measure, e.g. --workers 1 2",
    )
    args = parser.parse_args()
    log_dir = REPO / "var" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    codec = build_codec(None, SchemaCatalog.load())
    sample = codec.encode(
        "NotificationRequest",
        {
            "tenant_id": "bench",
            "occurred_at": now_ms(),
            "channels": ["in_app"],
            "recipients": [{"user_id": "u1"}],
            "content": {"text": "Item {{ n }} is ready"},
            "data_json": '{"n": 1}',
        },
    )
    baseline = run_baseline(args.bootstrap, args.count, sample)
    pipelines = [run_pipeline(args.bootstrap, args.count, log_dir, n) for n in args.workers]
    print(f"\n{'':<28} {'count':>7} {'msg/s':>10} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
    for result in (baseline, *pipelines):
        print(result.row())
    for result in pipelines[:1]:
        print_message_counts(result)
    print(
        f"\n{os.cpu_count()} cores; latency: request occurred_at -> final status event "
        f"(pipeline) / -> arrival after the last hop (baseline)"
    )


if __name__ == "__main__":
    main()
