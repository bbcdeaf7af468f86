"""Send many and batches through the shim, against the real broker and a real Postgres.

What the shim produced is read back from the topics (notifications.requests,
notifications.batches) and checked against what the batch stage's own rules accept. Progress
comes from batch events and status events produced onto their topics (what the batch and
status stages would write) and from the real sink's read model.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from api_shim.app import create_app
from api_shim.auth import new_api_key
from connectors.postgres_sink import SinkRunner
from core.catalog import TopicCatalog
from core.ids import notification_id, status_event_id
from core.kafka_clients import producer_config
from core.provision import provision
from core.settings import Settings
from schemas import SchemaCatalog, build_codec
from streams.batch_client import request_id_for
from streams.state.batches import chunk_rejection, command_rejection
from tests.support.pipeline import wait_until
from tests.support.topic_tail import Produced, TopicTail

pytestmark = pytest.mark.integration

CODEC = build_codec(None, SchemaCatalog.load())
KEY_A = {"X-API-Key": "key-a"}
KEY_B = {"X-API-Key": "key-b"}


def item(user: str, channels: tuple[str, ...] = ("email",), **extra: Any) -> dict[str, Any]:
    return {
        "recipients": [{"user_id": user, "email": f"{user}@example.com"}],
        "channels": list(channels),
        "content": {"subject": "Hi {{ name }}", "text": "Hello"},
        "data": {"name": user},
        **extra,
    }


def now_ms() -> int:
    return int(time.time() * 1000)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, fresh_database: str) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t-{uuid.uuid4().hex[:12]}.",
        database_url=fresh_database,
        shim_api_keys={"key-a": "tenant-a", "key-b": "tenant-b"},
        sink_flush_seconds=0.2,
        shim_send_many_max=5,
        shim_batch_chunk_max=4,
    )
    provision(settings)
    return settings


@pytest.fixture(scope="module")
def producer(settings: Settings) -> Producer:
    return Producer(producer_config(settings))


def produce(
    settings: Settings,
    producer: Producer,
    logical: str,
    schema: str,
    key: str,
    record: dict[str, Any],
) -> None:
    topic = TopicCatalog.load(settings).name(logical)
    producer.produce(topic, key=key.encode(), value=CODEC.encode(schema, record))
    assert producer.flush(15) == 0


@pytest.fixture(scope="module")
def scoped_keys(settings: Settings, producer: Producer) -> dict[str, dict[str, str]]:
    """Keys of tenant-a with one scope each, on config.api-keys before the shim starts."""
    keys = {}
    for scope in ("read", "send"):
        key_id, key, digest = new_api_key()
        record = {
            "key_id": key_id,
            "tenant_id": "tenant-a",
            "name": scope,
            "scopes": [scope],
            "secret_sha256": digest,
            "created_at": now_ms(),
            "revoked_at": None,
        }
        produce(settings, producer, "config.api-keys", "ApiKey", key_id, record)
        keys[scope] = {"X-API-Key": key}
    return keys


@pytest.fixture(scope="module")
def client(settings: Settings, scoped_keys: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def commands(settings: Settings) -> Iterator[TopicTail]:
    tail = TopicTail(settings, "notifications.batches", "BatchCommand", CODEC)
    yield tail
    tail.close()


@pytest.fixture(scope="module")
def requests_topic(settings: Settings) -> Iterator[TopicTail]:
    tail = TopicTail(settings, "notifications.requests", "NotificationRequest", CODEC)
    yield tail
    tail.close()


@pytest.fixture(scope="module")
def sink(settings: Settings) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=SinkRunner(settings).run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def of_batch(tail: TopicTail, batch_id: str, *kinds: str) -> list[Produced]:
    return [m for m in tail.messages if m.key == batch_id and m.value["kind"] in kinds]


def create_batch(client: TestClient, **body: Any) -> tuple[str, str]:
    response = client.post("/api/v1/batches", json=body, headers=KEY_A)
    assert response.status_code == 201, response.text
    return response.json()["batch_id"], response.json()["token"]


def assert_error(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error and body["message"], body
    return body


# -- send many -----------------------------------------------------------------------------


def test_send_many_accepts_the_valid_items_and_reports_the_others_by_index(
    client: TestClient, requests_topic: TopicTail
) -> None:
    items = [
        item("m1"),
        {**item("m2"), "recipients": []},
        item("m3", ("email", "in_app")),
        {**item("m4"), "channels": ["carrier-pigeon"]},
    ]
    headers = {**KEY_A, "Idempotency-Key": "many-1"}
    response = client.post(
        "/api/v1/notifications/batch", json={"notifications": items}, headers=headers
    )
    assert response.status_code == 207, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    results = body["results"]
    assert [(r["index"], r["status"]) for r in results] == [
        (0, "accepted"),
        (1, "rejected"),
        (2, "accepted"),
        (3, "rejected"),
    ]
    assert [e["field"] for e in results[1]["errors"]] == ["recipients"]
    assert results[1]["request_id"] is None and results[1]["notifications"] == []
    assert [e["field"] for e in results[3]["errors"]] == ["channels.0"]
    assert {(n["user_id"], n["channel"]) for n in results[2]["notifications"]} == {
        ("m3", "email"),
        ("m3", "in_app"),
    }
    assert results[2]["notifications"][0]["notification_id"] == notification_id(
        "tenant-a", results[2]["request_id"], "m3", results[2]["notifications"][0]["channel"]
    )

    # Each accepted item is on the request topic with the call's key + its index.
    wanted = {results[0]["request_id"]: "many-1:0", results[2]["request_id"]: "many-1:2"}
    found = requests_topic.wait_for(
        lambda msgs: (
            {m.value["request_id"]: m for m in msgs if m.value["request_id"] in wanted}
            if len({m.value["request_id"] for m in msgs} & set(wanted)) == 2
            else None
        ),
        "the accepted items",
    )
    for request_id, key in wanted.items():
        record = found[request_id].value
        assert record["idempotency_key"] == key
        assert record["tenant_id"] == "tenant-a"
    assert found[results[0]["request_id"]].key == "tenant-a:m1"

    # A retry with the same key gets the same answer and writes nothing again.
    replay = client.post(
        "/api/v1/notifications/batch", json={"notifications": items}, headers=headers
    )
    assert replay.status_code == 207 and replay.json() == body
    assert replay.headers["Idempotent-Replayed"] == "true"
    requests_topic.poll(1.0)
    written = [m for m in requests_topic.messages if m.value["request_id"] in wanted]
    assert len(written) == 2


def test_send_many_all_valid_is_202_and_the_limits_and_refusals(
    client: TestClient, scoped_keys: dict[str, dict[str, str]]
) -> None:
    path = "/api/v1/notifications/batch"
    ok = client.post(path, json={"notifications": [item("n1"), item("n2")]}, headers=KEY_A)
    assert ok.status_code == 202, ok.text
    assert ok.json()["accepted"] == 2
    # A send-only key may send.
    assert (
        client.post(
            path, json={"notifications": [item("n3")]}, headers=scoped_keys["send"]
        ).status_code
        == 202
    )

    too_many = client.post(
        path, json={"notifications": [item(f"x{i}") for i in range(6)]}, headers=KEY_A
    )
    assert "at most 5" in assert_error(too_many, 413, "payload_too_large")["message"]
    assert_error(
        client.post(path, json={"notifications": []}, headers=KEY_A), 422, "validation_failed"
    )
    # An item that is not an object is not a notification at all: the call is refused.
    not_an_object = client.post(
        path, json={"notifications": [item("n4"), "not an object"]}, headers=KEY_A
    )
    refused = assert_error(not_an_object, 422, "validation_failed")
    assert "notifications.1" in str(refused), refused
    assert_error(client.post(path, json={"notifications": [item("n")]}), 401, "unauthorized")
    assert_error(
        client.post(path, json={"notifications": [item("n")]}, headers=scoped_keys["read"]),
        403,
        "forbidden",
    )


def test_send_many_and_chunks_refuse_another_tenants_provider(
    client: TestClient, commands: TopicTail, requests_topic: TopicTail
) -> None:
    foreign = {"providers": {"email": "tenant-b:sendgrid"}}
    many = client.post(
        "/api/v1/notifications/batch",
        json={"notifications": [item("f1", providers={"email": "own"}), item("f2", **foreign)]},
        headers=KEY_A,
    )
    assert many.status_code == 207, many.text
    ok, refused = many.json()["results"]
    assert (ok["status"], refused["status"]) == ("accepted", "rejected")
    assert [e["field"] for e in refused["errors"]] == ["providers.email"]
    assert "tenant-b:sendgrid" in refused["errors"][0]["message"]

    batch_id, token = create_batch(client)
    chunk = client.post(
        f"/api/v1/batches/{batch_id}/chunks",
        json=[item("f3"), item("f4", **foreign)],
        headers={**KEY_A, "X-Batch-Token": token},
    )
    fields = [d["field"] for d in assert_error(chunk, 422, "validation_failed")["detail"]]
    assert fields == ["1.providers.email"]
    commands.poll(1.0)
    assert of_batch(commands, batch_id, "append") == []
    sent = requests_topic.wait_for(
        lambda msgs: [m for m in msgs if m.value["request_id"] == ok["request_id"]], "f1"
    )
    assert sent[0].value["provider_overrides"] == {"email": "own"}
    requests_topic.poll(0.5)
    users = {m.value["recipients"][0]["user_id"] for m in requests_topic.messages}
    assert "f2" not in users


def test_a_batch_id_must_be_one_of_the_callers_batches(client: TestClient) -> None:
    """Attaching notifications to another tenant's batch skewed its counts (issue 21, MEDIUM 8)."""
    batch_id, _token = create_batch(client)  # tenant-a's
    one = {**item("b1"), "batch_id": batch_id}
    refused = client.post("/api/v1/notifications", json=one, headers=KEY_B)
    detail = assert_error(refused, 422, "validation_failed")["detail"]
    assert [d["field"] for d in detail] == ["batch_id"]
    unknown = client.post(
        "/api/v1/notifications", json={**one, "batch_id": "no-such-batch"}, headers=KEY_A
    )
    assert_error(unknown, 422, "validation_failed")
    many = client.post("/api/v1/notifications/batch", json={"notifications": [one]}, headers=KEY_B)
    assert many.status_code == 207, many.text
    [result] = many.json()["results"]
    assert result["status"] == "rejected" and result["errors"][0]["field"] == "batch_id"
    own = client.post("/api/v1/notifications", json=one, headers=KEY_A)
    assert own.status_code == 202, own.text


# -- batches -------------------------------------------------------------------------------


def test_create_append_close_cancel_produce_the_commands_the_batch_stage_accepts(
    client: TestClient, commands: TopicTail, settings: Settings
) -> None:
    batch_id, token = create_batch(client, total_expected=3)
    chunk = [item("b1"), item("b2", ("email", "in_app"))]
    auth = {**KEY_A, "X-Batch-Token": token}
    appended = client.post(f"/api/v1/batches/{batch_id}/chunks", json=chunk, headers=auth)
    assert appended.status_code == 202, appended.text
    answer = appended.json()
    command_id = answer["command_id"]
    assert (answer["requests"], answer["notifications"]) == (2, 3)
    assert answer["request_ids"] == [request_id_for(batch_id, command_id, i) for i in (0, 1)]
    closed = client.post(f"/api/v1/batches/{batch_id}/close", headers=auth)
    assert closed.status_code == 202 and closed.json()["state"] == "closed"

    commands.wait_for(lambda _m: len(of_batch(commands, batch_id, "close")) == 1, "close")
    [create] = of_batch(commands, batch_id, "create")
    [append] = of_batch(commands, batch_id, "append")
    assert create.value["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert create.value["total_expected"] == 3 and create.value["tenant_id"] == "tenant-a"
    assert append.value["command_id"] == command_id
    assert append.partition == create.partition  # keyed by batch id
    assert [r["recipients"][0]["user_id"] for r in append.value["requests"]] == ["b1", "b2"]
    assert {r["tenant_id"] for r in append.value["requests"]} == {"tenant-a"}
    assert append.value["requests"][1]["channels"] == ["email", "in_app"]
    assert not [m for m in commands.messages if token.encode() in m.raw], "the token travelled"
    registered = TopicTail(settings, "shim.batches", "ShimBatch", CODEC)
    try:
        records = registered.wait_for(
            lambda msgs: [m for m in msgs if m.key == batch_id], "the batch's registry record"
        )
    finally:
        registered.close()
    assert records[0].value["token_sha256"] == create.value["token_sha256"]
    assert records[0].value["tenant_id"] == "tenant-a"
    assert not [m for m in records if token.encode() in m.raw]

    # The batch stage's own checks pass these commands.
    stage_batch = {**create.value, "state": "open"}
    assert command_rejection(stage_batch, append.value) is None
    assert chunk_rejection(stage_batch, append.value["requests"]) is None

    late = client.post(f"/api/v1/batches/{batch_id}/chunks", json=chunk, headers=auth)
    assert "closed" in assert_error(late, 409, "conflict")["message"]
    assert_error(client.post(f"/api/v1/batches/{batch_id}/close", headers=auth), 409, "conflict")
    cancelled = client.post(f"/api/v1/batches/{batch_id}/cancel", headers=auth)
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    assert_error(client.post(f"/api/v1/batches/{batch_id}/cancel", headers=auth), 409, "conflict")
    commands.wait_for(lambda _m: of_batch(commands, batch_id, "cancel"), "cancel")
    assert len(of_batch(commands, batch_id, "append")) == 1


def test_wrong_token_other_tenant_oversized_or_invalid_chunks_are_refused(
    client: TestClient, commands: TopicTail, scoped_keys: dict[str, dict[str, str]]
) -> None:
    batch_id, token = create_batch(client)
    chunks = f"/api/v1/batches/{batch_id}/chunks"
    good = [item("r1")]

    wrong = client.post(chunks, json=good, headers={**KEY_A, "X-Batch-Token": "guess"})
    assert "token" in assert_error(wrong, 403, "forbidden")["message"]
    assert_error(client.post(chunks, json=good, headers=KEY_A), 403, "forbidden")
    for action in ("close", "cancel"):
        assert_error(
            client.post(
                f"/api/v1/batches/{batch_id}/{action}", headers={**KEY_A, "X-Batch-Token": "guess"}
            ),
            403,
            "forbidden",
        )

    # Another tenant, even with the right token, does not find the batch.
    other = {**KEY_B, "X-Batch-Token": token}
    assert_error(client.post(chunks, json=good, headers=other), 404, "not_found")
    assert_error(client.post(f"/api/v1/batches/{batch_id}/close", headers=other), 404, "not_found")
    assert_error(client.get(f"/api/v1/batches/{batch_id}", headers=KEY_B), 404, "not_found")
    unknown = client.post(
        "/api/v1/batches/no-such-batch/chunks", json=good, headers={**KEY_A, "X-Batch-Token": token}
    )
    assert_error(unknown, 404, "not_found")

    auth = {**KEY_A, "X-Batch-Token": token}
    oversized = client.post(chunks, json=[item(f"o{i}") for i in range(5)], headers=auth)
    assert "at most 4" in assert_error(oversized, 413, "payload_too_large")["message"]
    invalid = client.post(
        chunks, json=[item("i1"), {**item("i2"), "channels": ["pigeon"]}], headers=auth
    )
    fields = [d["field"] for d in assert_error(invalid, 422, "validation_failed")["detail"]]
    assert fields == ["1.channels.0"]
    assert_error(client.post(chunks, json=[], headers=auth), 422, "validation_failed")

    assert_error(
        client.post(chunks, json=good, headers={**scoped_keys["read"], "X-Batch-Token": token}),
        403,
        "forbidden",
    )
    assert_error(
        client.post("/api/v1/batches", json={}, headers=scoped_keys["read"]), 403, "forbidden"
    )
    assert_error(
        client.post("/api/v1/batches", json={"total_expected": -1}, headers=KEY_A),
        422,
        "validation_failed",
    )
    assert_error(client.post(chunks, json=good), 401, "unauthorized")

    commands.poll(1.0)
    assert of_batch(commands, batch_id, "append", "close", "cancel") == []


def test_idempotency_keys_replay_creates_appends_and_closes(
    client: TestClient, commands: TopicTail, settings: Settings
) -> None:
    headers = {**KEY_A, "Idempotency-Key": f"create-{uuid.uuid4()}"}
    first = client.post("/api/v1/batches", json={"total_expected": 2}, headers=headers)
    again = client.post("/api/v1/batches", json={"total_expected": 2}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    batch_id, token = first.json()["batch_id"], first.json()["token"]
    # The same batch; the token is not kept anywhere, so the replay cannot show it.
    assert again.json() == {**first.json(), "token": None} and token
    assert_error(
        client.post("/api/v1/batches", json={"total_expected": 3}, headers=headers),
        422,
        "unprocessable",
    )

    auth = {**KEY_A, "X-Batch-Token": token, "Idempotency-Key": "chunk-1"}
    chunks = f"/api/v1/batches/{batch_id}/chunks"
    one = client.post(chunks, json=[item("i1"), item("i2")], headers=auth)
    two = client.post(chunks, json=[item("i1"), item("i2")], headers=auth)
    assert one.status_code == two.status_code == 202
    assert two.json() == one.json() and two.headers["Idempotent-Replayed"] == "true"

    close = {**KEY_A, "X-Batch-Token": token, "Idempotency-Key": "close-1"}
    assert client.post(f"/api/v1/batches/{batch_id}/close", headers=close).status_code == 202
    replayed = client.post(f"/api/v1/batches/{batch_id}/close", headers=close)
    assert replayed.status_code == 202 and replayed.headers["Idempotent-Replayed"] == "true"

    commands.wait_for(lambda _m: of_batch(commands, batch_id, "close"), "close")
    commands.poll(0.5)
    assert [m.value["command_id"] for m in of_batch(commands, batch_id, "append")] == [
        one.json()["command_id"]
    ]
    assert len(of_batch(commands, batch_id, "create", "close")) == 2
    answers = TopicTail(settings, "shim.idempotency", "IdempotentResponse", CODEC)
    try:
        kept = answers.wait_for(
            lambda msgs: [
                m for m in msgs if m.value["idempotency_key"] == headers["Idempotency-Key"]
            ],
            "the kept answer",
        )
    finally:
        answers.close()
    assert token.encode() not in kept[0].raw


def test_another_shim_process_knows_the_batches_from_the_topic(
    settings: Settings, client: TestClient
) -> None:
    batch_id, token = create_batch(client)
    with TestClient(create_app(settings)) as restarted:
        chunks = f"/api/v1/batches/{batch_id}/chunks"
        assert_error(
            restarted.post(chunks, json=[item("p1")], headers={**KEY_A, "X-Batch-Token": "guess"}),
            403,
            "forbidden",
        )
        assert_error(
            restarted.post(chunks, json=[item("p1")], headers={**KEY_B, "X-Batch-Token": token}),
            404,
            "not_found",
        )
        ok = restarted.post(chunks, json=[item("p1")], headers={**KEY_A, "X-Batch-Token": token})
        assert ok.status_code == 202, ok.text


def test_progress_counts_batch_events_and_statuses_of_the_batch(
    client: TestClient,
    settings: Settings,
    producer: Producer,
    sink: None,
    scoped_keys: dict[str, dict[str, str]],
) -> None:
    batch_id, token = create_batch(client)
    appended = client.post(
        f"/api/v1/batches/{batch_id}/chunks",
        json=[item("g1"), item("g2")],
        headers={**KEY_A, "X-Batch-Token": token},
    )
    command_id, request_ids = appended.json()["command_id"], appended.json()["request_ids"]
    path = f"/api/v1/batches/{batch_id}"

    empty = client.get(path, headers=scoped_keys["read"])
    assert empty.status_code == 200, empty.text
    assert empty.json()["state"] == "open" and empty.json()["counts"] == {}
    assert empty.json()["appended"] == 0 and empty.json()["completed"] is False

    def batch_event(event_type: str, tenant: str = "tenant-a", **fields: Any) -> None:
        record = {
            "event_id": str(uuid.uuid4()),
            "event_type": event_type,
            "batch_id": batch_id,
            "tenant_id": tenant,
            "occurred_at": now_ms(),
            **fields,
        }
        produce(settings, producer, "notifications.batch-events", "BatchEvent", batch_id, record)

    def status(request_id: str, user: str, state: str) -> None:
        nid = notification_id("tenant-a", request_id, user, "email")
        record = {
            "event_id": status_event_id(nid, state),
            "notification_id": nid,
            "request_id": request_id,
            "tenant_id": "tenant-a",
            "batch_id": batch_id,
            "channel": "email",
            "recipient_id": user,
            "status": state,
            "stage": "test",
            "request_occurred_at": now_ms(),
            "occurred_at": now_ms(),
        }
        produce(settings, producer, "notifications.status", "StatusEvent", nid, record)

    # What the batch and status stages would write.
    batch_event("batch.created")
    batch_event("batch.chunk_accepted", command_id=command_id, counts={"chunk": 2, "appended": 2})
    batch_event("batch.chunk_accepted", command_id=command_id, counts={"chunk": 2, "appended": 2})
    batch_event("batch.chunk_rejected", command_id="c-bad", reason="bad token")
    batch_event("batch.chunk_rejected", tenant="tenant-b", command_id="c-b", reason="wrong tenant")
    status(request_ids[0], "g1", "accepted")
    status(request_ids[0], "g1", "sent")
    status(request_ids[1], "g2", "accepted")

    def progress() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(path, headers=KEY_A).json()
        return body if body["notifications"] == 2 and body["chunks_rejected"] == 1 else None

    seen = wait_until(progress, 30, "progress from events and the read model")
    assert seen["counts"] == {"sent": 1, "accepted": 1}
    assert (seen["final"], seen["appended"], seen["chunks_accepted"]) == (1, 2, 1)
    assert seen["rejections"] == [{"command_id": "c-bad", "reason": "bad token"}]
    assert seen["expected"] is None and seen["completed"] is False

    batch_event("batch.closed", total_expected=2)
    batch_event("batch.completed", total_expected=2, counts={"accepted": 2, "sent": 2})
    done = wait_until(
        lambda: (b := client.get(path, headers=KEY_A).json())["completed"] and b, 15, "completion"
    )
    assert (done["state"], done["expected"]) == ("closed", 2)

    assert_error(client.get(path, headers=KEY_B), 404, "not_found")
    assert_error(client.get(path, headers=scoped_keys["send"]), 403, "forbidden")
    assert_error(client.get(path), 401, "unauthorized")
