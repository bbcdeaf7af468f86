"""Idempotency-Key answers: bounded in memory and on Kafka, never a failure after the effect.

Issue 21, MEDIUM 11. No broker here: the view is the real one (its reader thread is never
started) and the shim runs with a fake producer standing in for Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api_shim.app import create_app
from api_shim.idempotency import MAX_KEPT_BODY_BYTES, TOPIC, Packing, _kept, _replay
from api_shim.idempotency_view import TTL_MS, AnswerView
from api_shim.producer import ProduceError
from connectors.read_model import make_engine
from core.catalog import TopicCatalog
from core.settings import Settings
from schemas import SchemaCatalog, build_codec

SETTINGS = Settings(
    shim_api_keys={"key-a": "tenant-a"},
    topic_prefix="unit.",
    database_url="sqlite://",
    kafka_bootstrap_servers="127.0.0.1:9",  # no broker: views stay empty
    shim_view_catchup_seconds=0.0,
)
CODEC = build_codec(None, SchemaCatalog.load())
BODY = {
    "recipients": [{"user_id": "u1"}, {"user_id": "u2"}],
    "channels": ["email", "in_app"],
    "content": {"text": "Hello"},
}


def answer(key: str, created_at: int, body_json: str = "{}") -> dict[str, Any]:
    return {
        "tenant_id": "t",
        "idempotency_key": key,
        "method": "POST",
        "path": "/api/v1/notifications",
        "request_sha256": "0" * 64,
        "status_code": 202,
        "body_json": body_json,
        "created_at": created_at,
        "body_form": "full",
    }


def view(max_bytes: int = 1 << 30) -> AnswerView:
    return AnswerView(
        SETTINGS, "unit.shim.idempotency", "IdempotentResponse", CODEC, max_bytes=max_bytes
    )


def test_expired_answers_are_evicted_from_memory() -> None:
    answers = view()
    now = int(time.time() * 1000)
    for i in range(100):
        answers.apply(f"t:old-{i}", answer(f"old-{i}", now - TTL_MS - 1000 + i))
    # Old answers (read back from the topic at start-up, say) are not even kept...
    assert len(answers) == 0
    answers.apply("t:soon", answer("soon", now - TTL_MS + 200))
    answers.apply("t:new", answer("new", now))
    assert len(answers) == 2
    time.sleep(0.3)
    # ...and one that expires meanwhile is gone at the next write, not at the next restart.
    answers.apply("t:newer", answer("newer", int(time.time() * 1000)))
    assert answers.get("t:soon") is None
    assert len(answers) == 2


def test_memory_is_bounded_by_dropping_the_oldest_answers() -> None:
    answers = view(max_bytes=100_000)
    now = int(time.time() * 1000)
    for i in range(1000):
        answers.apply(f"t:k-{i}", answer(f"k-{i}", now + i, "x" * 1000))
    assert answers.bytes <= 100_000
    assert answers.get("t:k-999") is not None  # the newest stay
    assert answers.get("t:k-0") is None
    assert 50 < len(answers) < 100


def test_the_idempotency_topic_is_bounded_in_time_and_size() -> None:
    config = TopicCatalog.load(SETTINGS)[TOPIC].kafka_config()
    assert config["cleanup.policy"] == "compact,delete"
    assert config["retention.ms"] == str(TTL_MS)
    # Retention deletes closed segments only: the default 7-day segments kept answers a week.
    assert int(config["segment.ms"]) <= 3_600_000
    assert int(config["retention.bytes"]) <= 1 << 30


def test_an_answer_too_large_to_keep_is_refused_on_replay_not_repeated() -> None:
    form, body_json = _kept(201, {"blob": "x" * (MAX_KEPT_BODY_BYTES + 1)}, None)
    assert (form, body_json) == ("dropped", "")
    record = {**answer("k", int(time.time() * 1000), body_json), "body_form": form}
    with pytest.raises(Exception) as raised:
        _replay(record, None)
    assert getattr(raised.value, "status_code", None) == 409


def test_a_packed_answer_is_replayed_whole() -> None:
    packing = Packing(
        pack=lambda a: {"n": len(a["items"])}, unpack=lambda p: {"items": [0] * p["n"]}
    )
    form, body_json = _kept(202, {"items": [0] * 50_000}, packing)
    assert form == "packed" and len(body_json) < 100
    record = {**answer("k", int(time.time() * 1000), body_json), "body_form": form}
    assert _replay(record, packing).body == b'{"items":[' + b",".join([b"0"] * 50_000) + b"]}"


class IdempotencyTopicDown:
    """Kafka accepts the request but not the answer kept for its Idempotency-Key."""

    ack_timeout = 0.1

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def produce(self, topic: str, **kwargs: Any) -> None:
        if topic.endswith(TOPIC):
            raise ProduceError("Broker: Message size too large")
        self.sent.append(topic)

    def list_topics(self, timeout: float) -> set[str]:
        return set()


@pytest.fixture
def down() -> Iterator[tuple[IdempotencyTopicDown, TestClient]]:
    producer = IdempotencyTopicDown()
    engine = make_engine("sqlite://")
    app = create_app(SETTINGS, producer=producer, engine=engine)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield producer, client
    engine.dispose()


def test_failing_to_keep_the_answer_does_not_fail_the_request(
    down: tuple[IdempotencyTopicDown, TestClient],
) -> None:
    producer, client = down
    headers = {"X-API-Key": "key-a", "Idempotency-Key": "kept-here"}
    first = client.post("/api/v1/notifications", json=BODY, headers=headers)
    assert first.status_code == 202, first.text  # the request was produced: say so
    again = client.post("/api/v1/notifications", json=BODY, headers=headers)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert producer.sent == ["unit.notifications.requests"]  # produced once
