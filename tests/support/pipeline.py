"""An isolated pipeline on the real broker: uuid-prefixed topics, real worker processes.

Each Pipeline provisions its own topics (TOPIC_PREFIX) and runs the real entry points as
subprocesses: the Faust worker (`python -m streams worker`), the Postgres sink and, when
asked, the HTTP shim. Tests talk to it only through Kafka, HTTP, SMTP and the database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from core.catalog import TopicCatalog
from core.ids import notification_id
from core.kafka_clients import client_config
from core.provision import provision
from core.settings import Settings
from schemas import SchemaCatalog, build_codec
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ProcessDied(AssertionError):
    """A pipeline process exited while a test waited on it: the message carries its log."""


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Pipeline:
    def __init__(
        self,
        *,
        bootstrap: str,
        database_url: str,
        smtp_port: int,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        schema_registry_url: str | None = None,
        split_lanes: bool = False,
    ) -> None:
        """`split_lanes`: a transactional and a bulk-lane worker process, as `make run` and
        production run them; otherwise one worker serves both lanes."""
        self.prefix = f"t{uuid.uuid4().hex[:8]}."
        self.settings = Settings(
            kafka_bootstrap_servers=bootstrap, topic_prefix=self.prefix, database_url=database_url
        )
        self.topics = TopicCatalog.load(self.settings)
        self.schemas = SchemaCatalog.load()
        self.codec = build_codec(schema_registry_url, self.schemas)
        self.web_port = free_port()
        self.metrics_port = free_port()  # the (transactional) worker's
        self.sink_metrics_port = free_port()
        self.shim_port = free_port()
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "TOPIC_PREFIX": self.prefix,
            "DATABASE_URL": database_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port),
            "WORKER_WEB_PORT": str(self.web_port),
            "METRICS_PORT": str(self.metrics_port),
            "SHIM_API_KEYS": '{"key-acme": "acme", "key-globex": "globex"}',
            "DELIVER_BACKOFF_SECONDS": "0.1",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.env.pop("SCHEMA_REGISTRY_URL", None)
        if schema_registry_url:
            self.env["SCHEMA_REGISTRY_URL"] = schema_registry_url
        self.worker = Process(
            "worker",
            [
                sys.executable,
                "-m",
                "streams",
                "worker",
                "-l",
                os.environ.get("WORKER_LOG_LEVEL", "info"),
            ],
            self.env,
            log_dir,
        )
        self.bulk_worker: Process | None = None
        self.status_worker: Process | None = None
        if split_lanes:
            # Each port goes to the part that serves it: metrics to the transactional
            # worker, the table pages (status.py) to the status worker.
            def part(lane: str, *without: str) -> dict[str, str]:
                env = {**self.env, "WORKER_LANE": lane}
                for name in without:
                    env.pop(name, None)
                return env

            argv = self.worker.argv
            self.worker.env = part("transactional", "WORKER_WEB_PORT")
            self.bulk_worker = Process(
                "bulk-worker", argv, part("bulk", "WORKER_WEB_PORT", "METRICS_PORT"), log_dir
            )
            self.status_worker = Process(
                "status-worker", argv, part("status", "METRICS_PORT"), log_dir
            )
        self.sink = Process(
            "sink",
            [sys.executable, "-m", "connectors.postgres_sink"],
            {**self.env, "METRICS_PORT": str(self.sink_metrics_port)},
            log_dir,
        )
        self.shim = Process(
            "shim",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api_shim.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.shim_port),
                "--log-level",
                "warning",
            ],
            self.env,
            log_dir,
        )
        self.producer = Producer(
            client_config(
                self.settings,
                **{"enable.idempotence": True, "partitioner": "murmur2_random", "linger.ms": 5},
            )
        )
        self._status_consumer: Consumer | None = None
        # (error, message) of every produce the broker refused, until flush() re-produces it.
        self.undelivered: list[tuple[str, tuple[Any, ...]]] = []
        self.delivered_at: dict[str, str] = {}  # request id -> where the broker acked it
        self.statuses: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.request_ids: dict[str, str] = {}  # notification id -> request id, of produce_record

    # -- lifecycle ------------------------------------------------------------------------
    def provision(self) -> None:
        report = provision(self.settings)
        assert not report.missing and not report.drift, report.lines()

    def start(self, *, shim: bool = False) -> Pipeline:
        self.provision()
        self.worker.start()
        for part in (self.bulk_worker, self.status_worker):
            if part is not None:
                part.start()
        self.sink.start()
        if shim:
            self.shim.start()
            wait_until(self._shim_ready, 60, "the shim to answer /health")
        return self

    def stop(self) -> None:
        for process in (self.shim, self.worker, self.bulk_worker, self.status_worker, self.sink):
            if process is not None:
                process.stop()
        if self._status_consumer is not None:
            self._status_consumer.close()

    def assert_alive(self) -> None:
        """Fail fast, with the log, when a pipeline process died instead of timing out."""
        for process in (self.worker, self.bulk_worker, self.status_worker, self.sink):
            if process is not None and process.proc is not None and not process.alive():
                code = process.proc.returncode
                raise ProcessDied(f"{process.name} exited ({code}):\n{process.tail()}")

    def _shim_ready(self) -> bool:
        try:
            return httpx.get(f"{self.shim_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def shim_url(self) -> str:
        return f"http://127.0.0.1:{self.shim_port}"

    # -- producing ------------------------------------------------------------------------
    def produce(
        self,
        logical_topic: str,
        key: str | None,
        value: bytes | None,
        headers: dict[str, bytes] | None = None,
    ) -> None:
        self._send(self.topics.name(logical_topic), key, value, headers)

    def _send(
        self,
        topic: str,
        key: str | None,
        value: bytes | None,
        headers: dict[str, bytes] | None,
        label: str | None = None,
    ) -> None:
        """Produce; the delivery report is kept: where a `label`led message landed
        (`delivered_at`), or the refusal (`undelivered`)."""

        def delivered(err: Any, message: Any) -> None:
            if err is not None:
                self.undelivered.append((str(err), (topic, key, value, headers, label)))
            elif label is not None:
                self.delivered_at[label] = (
                    f"{message.topic()}[{message.partition()}]@{message.offset()}"
                )

        self.producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)

    def produce_record(self, logical_topic: str, key: str | None, record: dict[str, Any]) -> None:
        schema = self.topics[logical_topic].value_schema
        assert schema is not None
        label = None
        if schema == "NotificationRequest":  # so diagnose() can find the request of a notification
            label = record.get("request_id")
            for recipient in record.get("recipients") or []:
                for channel in record.get("channels") or []:
                    user = recipient.get("user_id")
                    if isinstance(user, str) and isinstance(label, str):
                        nid = notification_id(record["tenant_id"], label, user, channel)
                        self.request_ids[nid] = label
        self._send(
            self.topics.name(logical_topic), key, self.codec.encode(schema, record), None, label
        )

    def flush(self) -> None:
        """Wait until every message produced is acknowledged. One the broker refused is
        produced again, as an upstream publisher would, and the refusal printed. Before, a
        refusal went unseen: the flaky test_lane_rate_limits lost requests that never reached
        the topic, and nothing said whether the producer had been told."""
        for _ in range(3):
            assert self.producer.flush(30) == 0, "messages left unflushed"
            if not self.undelivered:
                return
            failed, self.undelivered = self.undelivered, []
            errors = sorted({error for error, _ in failed})
            print(f"re-producing {len(failed)} refused message(s): {errors}")
            for _error, message in failed:
                self._send(*message)
        assert self.producer.flush(30) == 0 and not self.undelivered, self.undelivered[:3]

    # -- observing ------------------------------------------------------------------------
    def poll_statuses(self) -> dict[str, list[dict[str, Any]]]:
        """Read new status events into self.statuses (notification id -> events)."""
        if self._status_consumer is None:
            self._status_consumer = Consumer(
                client_config(
                    self.settings,
                    **{
                        "group.id": f"{self.prefix}test-{uuid.uuid4().hex[:6]}",
                        "auto.offset.reset": "earliest",
                        "enable.auto.commit": False,
                    },
                )
            )
            self._status_consumer.subscribe([self.topics.name("notifications.status")])
        while True:
            messages = self._status_consumer.consume(500, timeout=0.5)
            if not messages:
                return self.statuses
            for message in messages:
                if message.error():
                    continue
                event = self.codec.decode(message.value(), "StatusEvent")
                self.statuses[event["notification_id"]].append(event)

    def latest(self, notification_id: str) -> set[str]:
        return {event["status"] for event in self.statuses.get(notification_id, [])}

    def wait_for_status(self, ids: list[str], statuses: set[str], timeout: float = 120) -> None:
        def done() -> bool:
            self.assert_alive()
            self.poll_statuses()
            return all(self.latest(nid) & statuses for nid in ids)

        try:
            wait_until(done, timeout, f"{len(ids)} notifications to reach {statuses}", every=0.5)
        except ProcessDied:
            raise  # the cause, not "did not reach"
        except AssertionError:
            missing = [nid for nid in ids if not self.latest(nid) & statuses]
            raise AssertionError(
                f"{len(missing)} of {len(ids)} did not reach {statuses}; e.g. {missing[:3]} "
                f"with {[sorted(self.latest(n)) for n in missing[:3]]}\n"
                f"{self.diagnose(missing[:3])}"
            ) from None

    STAGE_TOPICS = (
        "notifications.requests",
        "notifications.requests.bulk",
        "notifications.accepted",
        "notifications.enriched",
        "notifications.rendered",
        "notifications.deliver.email",
        "notifications.deliver.email.bulk",
        "notifications.deliver.in_app",
        "notifications.deliver.in_app.bulk",
        "notifications.retry.short",
    )

    def groups(self) -> list[str]:
        """The consumer groups of this pipeline's worker parts (one per lane when split)."""
        app_id = self.settings.full_app_id
        if self.bulk_worker is None:
            return [app_id, f"{app_id}-loop"]
        # The status part's batched loop (streams/stages/status_loop.py) has its own group.
        return [app_id, f"{app_id}-bulk", f"{app_id}-status", f"{app_id}-status-loop"]

    def progress_report(self) -> str:
        """Each worker group's committed offset against the end offset, per stage partition
        it has committed on ('-' where it never committed: not its topic, or nothing yet)."""
        lines = []
        for group_id in self.groups():
            group = Consumer(
                client_config(self.settings, **{"group.id": group_id, "enable.auto.commit": False})
            )
            lines.append(f"--- group {group_id}: committed/end offsets ---")
            try:
                for logical in self.STAGE_TOPICS:
                    name = self.topics.name(logical)
                    partitions = range(self.topics[logical].partitions)
                    committed = group.committed([TopicPartition(name, p) for p in partitions], 5)
                    if all(tp.offset < 0 for tp in committed):
                        continue
                    progress = " ".join(
                        f"p{tp.partition}:{tp.offset}/{group.get_watermark_offsets(tp, 5)[1]}"
                        for tp in committed
                    )
                    lines.append(f"{logical}: {progress}")
            except Exception as exc:
                lines.append(f"(progress report failed: {exc!r})")
            finally:
                group.close()
        return "\n".join(lines)

    def diagnose(self, stuck_ids: list[str]) -> str:
        """Where stuck notifications sit on the stage topics (a request this Pipeline produced
        is found by its request id), how far each worker group has committed there, and every
        task's stack (mode's SIGUSR1 handler logs them)."""
        lines = ["--- where the stuck notifications are (topic[partition]@offset) ---"]
        needles = [nid.encode() for nid in stuck_ids] + [
            self.request_ids[nid].encode() for nid in stuck_ids if nid in self.request_ids
        ]
        try:
            for logical in self.STAGE_TOPICS:
                found = [
                    f"{m.partition()}@{m.offset()}"
                    for m in self.read_topic(logical, timeout=2.0)
                    if any(needle in (m.value() or b"") for needle in needles)
                ]
                lines.append(f"{logical}: found {found or '-'}")
        except Exception as exc:  # a diagnosis must not hide the failure it explains
            lines.append(f"(diagnosis failed: {exc!r})")
        for nid in stuck_ids:
            request_id = self.request_ids.get(nid)
            if request_id is not None:
                where = self.delivered_at.get(request_id, "no delivery report")
                lines.append(f"request {request_id} of {nid}: acknowledged at {where}")
        lines.append(self.progress_report())
        for part in (self.worker, self.bulk_worker, self.status_worker):
            if part is not None and part.alive() and part.proc is not None:
                part.proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        for part in (self.worker, self.bulk_worker, self.status_worker):
            if part is not None:
                lines.append(f"--- {part.name} log ({part.log_path}) ---")
                lines.append(part.tail(40 if part is self.worker else 15))
        return "\n".join(lines)

    def read_topic(self, logical_topic: str, timeout: float = 5.0) -> list[Any]:
        """Every message currently on a topic (all partitions), as confluent Message objects."""
        name = self.topics.name(logical_topic)
        consumer = Consumer(
            client_config(
                self.settings,
                **{
                    "group.id": f"{self.prefix}read-{uuid.uuid4().hex[:6]}",
                    "enable.auto.commit": False,
                },
            )
        )
        try:
            metadata = consumer.list_topics(name, timeout=timeout)
            out = []
            for partition in metadata.topics[name].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout)
                if high <= low:
                    continue
                consumer.assign([TopicPartition(name, partition, low)])
                while True:
                    message = consumer.poll(timeout)
                    if message is None or message.error():
                        break
                    out.append(message)
                    if message.offset() >= high - 1:
                        break
            return out
        finally:
            consumer.close()

    def worker_json(self, path: str) -> Any:
        return httpx.get(f"http://127.0.0.1:{self.web_port}{path}", timeout=5).json()


def wait_materialised(pipeline: Pipeline, logical_topic: str, timeout: float = 120) -> None:
    """Until the worker's consumer group has committed past everything on the topic.

    Preferences and notifications travel on different topics: without this barrier a
    notification may overtake its preferences.
    """
    pipeline.flush()
    name = pipeline.topics.name(logical_topic)
    consumer = Consumer(
        client_config(
            pipeline.settings,
            **{"group.id": pipeline.settings.full_app_id, "enable.auto.commit": False},
        )
    )
    partitions = [TopicPartition(name, p) for p in range(pipeline.topics[logical_topic].partitions)]
    ends: dict[int, int] = {}

    def caught_up() -> bool:
        pipeline.assert_alive()
        try:  # fresh topics may not have a leader yet: retry until they do
            for tp in partitions:
                if tp.partition not in ends:
                    ends[tp.partition] = consumer.get_watermark_offsets(tp, 10)[1]
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException:
            return False
        return all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in committed)

    try:
        wait_until(caught_up, timeout, f"the worker to read {logical_topic}", every=0.5)
    finally:
        consumer.close()
