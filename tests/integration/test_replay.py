"""Dead-letter replay on the real broker: `python -m streams.replay` as an operator runs it.

Dead letters are written the way the stages write them (the project's codec, the original key
and bytes, a trace header); no worker runs, so whatever reaches a source topic came from the
replay command.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from core.kafka_clients import consumer_config
from streams.replay import Selection, dead_letter_ranges, read_range
from tests.integration.conftest import now_ms
from tests.support.pipeline import REPO, Pipeline
from tests.support.requests import request_record

pytestmark = pytest.mark.integration

TRACE = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def provisioned(kafka_bootstrap: str, log_dir: Path) -> Pipeline:
    """Uuid-prefixed topics, provisioned; the pipeline's processes are never started."""
    pipeline = Pipeline(
        bootstrap=kafka_bootstrap, database_url="sqlite://", smtp_port=0, log_dir=log_dir
    )
    pipeline.provision()
    return pipeline


@pytest.fixture(scope="module")
def pipe(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return provisioned(kafka_bootstrap, tmp_path_factory.mktemp("replay"))


def replay(pipe: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.replay", *args],
        env=pipe.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


class DeadLetters:
    """Writes dead letters; remembers each one's position and original key and value."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.at: dict[str, str] = {}  # name -> "partition:offset" on the dead-letter topic
        self.originals: dict[str, tuple[bytes, bytes | None]] = {}  # name -> (key, value)

    def write(self, name: str, key: str, value: bytes, headers: dict[str, bytes]) -> None:
        def delivered(err: Any, message: Any) -> None:
            assert err is None, err
            self.at[name] = f"{message.partition()}:{message.offset()}"

        self.pipe.producer.produce(
            self.pipe.topics.name("notifications.dead-letter"),
            key=key,
            value=value,
            headers=headers,
            on_delivery=delivered,
        )

    def record(self, name: str, source: str, key: str, value: bytes | None, **fields: Any) -> None:
        """A DeadLetter as `streams.runtime.events.dead_letter` writes it, keyed by the
        original key."""
        record = {
            "stage": "request",
            "source_topic": self.pipe.topics.name(source),
            "source_partition": 3,
            "source_offset": 41,
            "key": key.encode(),
            "value": value,
            "error_type": "RuntimeError",
            "error": "boom",
            "tenant_id": "acme",
            "notification_id": None,
            "failed_at": now_ms(),
            **fields,
        }
        self.originals[name] = (key.encode(), value)
        self.write(name, key, self.pipe.codec.encode("DeadLetter", record), {"traceparent": TRACE})


@pytest.fixture(scope="module")
def letters(pipe: Pipeline) -> DeadLetters:
    """Four dead letters (one without its original value) and a record that is not one."""
    codec = pipe.codec
    letters = DeadLetters(pipe)
    letters.record(
        "acme-request",
        "notifications.requests",
        "acme:ada",
        codec.encode("NotificationRequest", request_record("ada")),
    )
    letters.record(
        "globex-request",
        "notifications.requests",
        "globex:grace",
        codec.encode("NotificationRequest", request_record("grace", tenant="globex")),
        tenant_id="globex",
        error_type="Rejected",
        error="recipients[0].email: not an address",
    )
    letters.record(
        "acme-profile",
        "users.profiles",
        "acme:ada",
        codec.encode("UserProfile", {"tenant_id": "acme", "user_id": "ada", "email": "a@x.test"}),
        stage="enrich:UserProfile",
        error_type="Rejected",
        error="key 'acme:ada' is on partition 3, murmur2 puts it on 1",
    )
    letters.record(
        "acme-no-value",
        "notifications.deliver.email",
        "acme:bob",
        None,
        stage="deliver",
        notification_id="n-bob",
        error="SMTP timeout",
    )
    letters.write("garbage", "x", b"not avro at all", {})
    pipe.flush()
    return letters


def listed(stdout: str) -> list[str]:
    """The dead-letter positions of the listing lines, sorted."""
    return sorted(line.split()[0] for line in stdout.splitlines() if line[:1].isdigit())


def arrived(pipe: Pipeline, topic: str) -> list[tuple[bytes, bytes, dict[str, bytes]]]:
    return [
        (m.key(), m.value(), dict(m.headers() or [])) for m in pipe.read_topic(topic, timeout=2)
    ]


SOURCES = ("notifications.requests", "users.profiles", "notifications.deliver.email")


def test_dry_run_then_apply_reinjects_exactly_the_selected_originals(
    pipe: Pipeline, letters: DeadLetters
) -> None:
    at = letters.at

    # 1. The dry run lists what it selects, warns about what it cannot replay, writes nothing.
    dry = replay(pipe)
    assert dry.returncode == 0, dry.stderr
    assert listed(dry.stdout) == sorted(
        at[name] for name in ("acme-request", "globex-request", "acme-profile")
    )
    assert "scanned 5 dead letters: 3 selected, 1 skipped (no original value)" in dry.stdout
    assert "dry run: nothing produced" in dry.stdout
    assert f"dead-letter {at['acme-no-value']} has no original value; skipped" in dry.stderr
    assert f"dead-letter {at['garbage']} is not a DeadLetter" in dry.stderr
    [line] = [line for line in dry.stdout.splitlines() if line.startswith(at["globex-request"])]
    assert "  request  tenant=globex  notification=-  from=notifications.requests  " in line
    assert line.endswith("Rejected: recipients[0].email: not an address")
    narrow = replay(pipe, "--stage", "enrich", "--error-contains", "MURMUR2")
    assert listed(narrow.stdout) == [at["acme-profile"]], narrow.stderr
    for topic in SOURCES:
        assert arrived(pipe, topic) == [], topic

    # 2. Apply with a filter: each selected original, byte for byte, on its own source topic.
    applied = replay(pipe, "--tenant", "acme", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert "replayed 2 of 2" in applied.stdout
    assert f"dead-letter {at['acme-no-value']} has no original value; skipped" in applied.stderr
    for topic, name in (
        ("notifications.requests", "acme-request"),
        ("users.profiles", "acme-profile"),
    ):
        key, value = letters.originals[name]
        headers = {"x-replayed-from": f"dead-letter:{at[name]}".encode(), "traceparent": TRACE}
        assert arrived(pipe, topic) == [(key, value, headers)], topic
    assert arrived(pipe, "notifications.deliver.email") == []

    # 3. The dead-letter topic is unchanged: a second dry run reads to the same end and stops.
    again = replay(pipe, "--tenant", "acme")
    assert again.returncode == 0, again.stderr
    assert listed(again.stdout) == sorted([at["acme-request"], at["acme-profile"]])


def test_a_partition_the_topic_does_not_have_exits_2(pipe: Pipeline) -> None:
    result = replay(pipe, "--partition", "9")
    assert result.returncode == 2
    assert "error: --partition 9: " in result.stderr
    assert "has partitions 0-3" in result.stderr


def test_reading_ends_at_the_end_offsets_taken_at_start(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    pipe = provisioned(kafka_bootstrap, tmp_path)
    before = DeadLetters(pipe)
    for n in range(6):
        before.record(f"before-{n}", "notifications.requests", f"acme:u{n}", b"v")
    pipe.flush()
    topic = pipe.topics.name("notifications.dead-letter")
    consumer = Consumer(consumer_config(pipe.settings, f"test-{uuid.uuid4().hex}"))
    try:
        ranges = dead_letter_ranges(consumer, topic, Selection())
        after = DeadLetters(pipe)  # e.g. a replayed message that failed again
        for n in range(6):
            after.record(f"after-{n}", "notifications.requests", f"acme:u{n}", b"v")
        pipe.flush()
        read = [f"{p}:{o}" for p, s, e in ranges for o, _ in read_range(consumer, topic, p, s, e)]
    finally:
        consumer.close()
    assert sorted(read) == sorted(before.at.values())
