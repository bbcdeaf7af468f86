"""The streamed CSV bulk upload, against the real broker, under a real uvicorn server.

The CSV is sent by httpx from a generator, in parts, as chunked transfer encoding (TestClient
would buffer the whole body first). Between parts the generator looks at what the shim has
done so far: the upload's progress, and the append commands already on
notifications.batches, which proves the rows reach Kafka while the file is still arriving.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from api_shim.auth import new_api_key
from core.catalog import TopicCatalog
from core.kafka_clients import producer_config
from core.provision import provision
from core.settings import Settings
from schemas import SchemaCatalog, build_codec
from streams.batch_client import command_id_for
from tests.support.pipeline import wait_until
from tests.support.shim_server import ShimServer
from tests.support.topic_tail import Produced, TopicTail

pytestmark = pytest.mark.integration

CODEC = build_codec(None, SchemaCatalog.load())
KEY_A = {"X-API-Key": "key-a"}
KEY_B = {"X-API-Key": "key-b"}
CSV = {"Content-Type": "text/csv"}
CHUNK_ROWS = 200
MAX_ROW_ERRORS = 5
MAX_CSV_BYTES = 2_000_000
HEADER = b"user_id,email,locale,data.name\n"


def row(i: int) -> bytes:
    return f"u{i},u{i}@example.com,en-GB,Name {i}\n".encode()


def params(upload_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"channels": ["email"], "template_id": "welcome", "priority": "low", **extra} | (
        {"upload_id": upload_id} if upload_id else {}
    )


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, fresh_database: str) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t-{uuid.uuid4().hex[:12]}.",
        database_url=fresh_database,
        shim_api_keys={"key-a": "tenant-a", "key-b": "tenant-b"},
        shim_csv_chunk_rows=CHUNK_ROWS,
        shim_csv_max_row_errors=MAX_ROW_ERRORS,
        shim_max_csv_bytes=MAX_CSV_BYTES,
    )
    provision(settings)
    return settings


@pytest.fixture(scope="module")
def scoped_keys(settings: Settings) -> dict[str, dict[str, str]]:
    """Keys of tenant-a with one scope each, on config.api-keys before the shim starts."""
    producer = Producer(producer_config(settings))
    topic = TopicCatalog.load(settings).name("config.api-keys")
    keys = {}
    for scope in ("read", "send"):
        key_id, key, digest = new_api_key()
        record = {
            "key_id": key_id,
            "tenant_id": "tenant-a",
            "name": scope,
            "scopes": [scope],
            "secret_sha256": digest,
            "created_at": int(time.time() * 1000),
            "revoked_at": None,
        }
        producer.produce(topic, key=key_id.encode(), value=CODEC.encode("ApiKey", record))
        keys[scope] = {"X-API-Key": key}
    assert producer.flush(15) == 0
    return keys


@pytest.fixture(scope="module")
def http(settings: Settings, scoped_keys: dict[str, Any]) -> Iterator[httpx.Client]:
    with (
        ShimServer(settings) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client,
    ):
        yield client


@pytest.fixture
def side(http: httpx.Client) -> Iterator[httpx.Client]:
    """A second connection, for looking at an upload while its body is being sent."""
    with httpx.Client(base_url=http.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def commands(settings: Settings) -> Iterator[TopicTail]:
    tail = TopicTail(settings, "notifications.batches", "BatchCommand", CODEC)
    yield tail
    tail.close()


def of_batch(tail: TopicTail, batch_id: str, *kinds: str) -> list[Produced]:
    return [m for m in tail.messages if m.key == batch_id and m.value["kind"] in kinds]


def upload(http: httpx.Client, body: Any, query: dict[str, Any], **headers: str) -> httpx.Response:
    return http.post(
        "/api/v1/bulk", params=query, content=body, headers={**KEY_A, **CSV, **headers}
    )


def assert_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error and body["message"], body
    assert "Traceback" not in response.text
    return body


def in_parts(
    rows: list[bytes], part_rows: int, between: Callable[[int], None] = lambda _sent: None
) -> Iterator[bytes]:
    """The CSV as a stream: the header, then `part_rows` rows per part; `between(rows sent)`
    runs after each part (while the server has it and waits for more)."""
    yield HEADER
    for start in range(0, len(rows), part_rows):
        yield b"".join(rows[start : start + part_rows])
        between(min(start + part_rows, len(rows)))


# -- tests ---------------------------------------------------------------------------------


def test_a_large_csv_streams_into_its_batch_in_chunks_with_row_errors_listed(
    http: httpx.Client, side: httpx.Client, commands: TopicTail
) -> None:
    upload_id = f"big-{uuid.uuid4().hex[:8]}"
    total = 5000
    bad = {
        10: b",nobody@example.com,en-GB,x\n",  # row 12: no user_id
        999: b"u999,u999@example.com\n",  # row 1001: too few fields
        2500: b"u2500," + b"x" * 400 + b"@example.com,en-GB,y\n",  # row 2502: email too long
        3000: b",,,\n",  # row 3002
        3001: b",,,\n",  # row 3003
        4000: b",,,\n",  # row 4002: listed errors stop at 5, the rest are counted
        4998: b",,,\n",  # row 5000
    }
    rows = [bad.get(i, row(i)) for i in range(total)]
    seen: dict[str, Any] = {}
    commands.poll(0.5)
    start = len(commands.messages)

    def look(sent: int) -> None:
        if sent != 1000:
            return
        # The first 1000 rows are with the server; the other 4000 are not sent yet.
        # The batch id is random (MEDIUM 8): this upload's is the first create after `start`.
        [create, *_] = commands.wait_for(
            lambda _m: [m for m in commands.messages[start:] if m.value["kind"] == "create"],
            "the upload's create command",
        )
        batch = create.key
        appends = commands.wait_for(
            lambda _m: len(of_batch(commands, batch, "append")) >= 4, "the first chunks"
        )
        seen["appended_before_the_end"] = len(appends) if isinstance(appends, list) else 4
        seen["progress"] = side.get(f"/api/v1/bulk/{upload_id}", headers=KEY_A).json()

    response = upload(http, in_parts(rows, 250, look), params(upload_id, category="marketing"))
    assert response.status_code == 202, response.text
    result = response.json()
    batch_id = result["batch_id"]

    # While streaming: progress visible, chunks already on the topic.
    progress = seen["progress"]
    assert progress["state"] == "receiving" and progress["batch_id"] == batch_id
    assert 800 <= progress["rows_accepted"] <= 1000 and progress["rows_read"] <= 1000
    assert [e["row"] for e in progress["errors"]] == [12, 1001]
    assert seen["appended_before_the_end"] >= 4

    good = [i for i in range(total) if i not in bad]
    assert result["state"] == "done" and result["batch_id"] == batch_id
    assert (result["rows_read"], result["rows_accepted"], result["rows_rejected"]) == (
        total,
        len(good),
        len(bad),
    )
    assert result["chunks_appended"] == -(-len(good) // CHUNK_ROWS)
    errors = {e["row"]: e for e in result["errors"]}
    assert sorted(errors) == [12, 1001, 2502, 3002, 3003]
    assert result["errors_omitted"] == 2
    assert errors[12]["message"] == "user_id is empty"
    assert errors[1001]["message"] == "2 fields where the header names 4 columns"
    assert errors[2502]["message"].startswith("email: ")
    assert errors[1001]["line"] == 1001

    # On the topic: create, every good row once in chunks of CHUNK_ROWS with derived ids, close.
    commands.wait_for(lambda _m: of_batch(commands, batch_id, "close"), "the close command")
    appends = of_batch(commands, batch_id, "append")
    assert [m.value["command_id"] for m in appends] == [
        command_id_for(batch_id, f"chunk-{n}") for n in range(len(appends))
    ]
    assert {len(m.value["requests"]) for m in appends[:-1]} == {CHUNK_ROWS}
    requests = [r for m in appends for r in m.value["requests"]]
    assert [r["recipients"][0]["user_id"] for r in requests] == [f"u{i}" for i in good]
    first = requests[0]
    assert first["recipients"][0] == {
        "user_id": "u0",
        "email": "u0@example.com",
        "phone": None,
        "locale": "en-GB",
        "timezone": None,
        "addresses": {},
    }
    assert (first["template_id"], first["priority"], first["category"]) == (
        "welcome",
        "low",
        "marketing",
    )
    assert first["data_json"] == '{"name":"Name 0"}' and first["channels"] == ["email"]
    assert len(of_batch(commands, batch_id, "create")) == 1

    batch = http.get(f"/api/v1/batches/{batch_id}", headers=KEY_A).json()
    assert (batch["state"], batch["upload_id"]) == ("closed", upload_id)
    assert http.get(f"/api/v1/bulk/{upload_id}", headers=KEY_A).json()["state"] == "done"


def test_cancel_mid_upload_stops_reading_and_cancels_the_batch(
    http: httpx.Client, side: httpx.Client, commands: TopicTail
) -> None:
    upload_id = f"cancel-{uuid.uuid4().hex[:8]}"
    seen: dict[str, Any] = {}

    def cancel_after_the_first_part(sent: int) -> None:
        if sent == 1000:
            wait_until(
                lambda: (
                    side.get(f"/api/v1/bulk/{upload_id}", headers=KEY_A).json()["rows_accepted"]
                    >= 800
                ),
                20,
                "the first rows to be appended",
            )
            seen["cancel"] = side.delete(f"/api/v1/bulk/{upload_id}", headers=KEY_A)
        elif sent > 1000:
            time.sleep(0.05)  # the rest trickles in: the shim must not wait for it

    rows = [row(i) for i in range(20_000)]
    started = time.monotonic()
    response = upload(http, in_parts(rows, 1000, cancel_after_the_first_part), params(upload_id))
    assert time.monotonic() - started < 30
    assert seen["cancel"].status_code == 202, seen["cancel"].text
    assert seen["cancel"].json()["state"] == "cancelled"
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["state"] == "cancelled"
    assert result["rows_read"] < len(rows)
    batch_id = result["batch_id"]

    [cancel] = commands.wait_for(lambda _m: of_batch(commands, batch_id, "cancel"), "cancel")
    appends = of_batch(commands, batch_id, "append")
    assert len(appends) == result["chunks_appended"] >= 4
    assert all(m.offset < cancel.offset for m in appends)
    assert sum(len(m.value["requests"]) for m in appends) == result["rows_accepted"]
    assert not of_batch(commands, batch_id, "close")

    assert http.get(f"/api/v1/bulk/{upload_id}", headers=KEY_A).json()["state"] == "cancelled"
    batch = http.get(f"/api/v1/batches/{batch_id}", headers=KEY_A).json()
    assert batch["state"] == "cancelled"
    again = http.delete(f"/api/v1/bulk/{upload_id}", headers=KEY_A)
    assert again.status_code == 202 and again.json()["state"] == "cancelled"
    commands.poll(0.5)
    assert len(of_batch(commands, batch_id, "cancel")) == 1
    assert_error(upload(http, HEADER + row(1), params(upload_id)), 409, "conflict")


def test_malformed_csv_is_a_400_naming_the_row(http: httpx.Client, commands: TopicTail) -> None:
    commands.poll(0.5)
    creates_before = [m for m in commands.messages if m.value["kind"] == "create"]
    no_user_id = upload(http, b"email,data.name\na@example.com,A\n", params("no-user-id"))
    body = assert_error(no_user_id, 400, "malformed_csv")
    assert body["detail"][0]["field"] == "row 1"
    assert "no user_id column" in body["detail"][0]["message"]

    quoting = upload(
        http, HEADER + b"".join(row(i) for i in range(5)) + b'u5,"x"y,en,z\n', params("bad-quote")
    )
    body = assert_error(quoting, 400, "malformed_csv")
    assert body["detail"][0]["field"] == "row 7" and "quoting" in body["detail"][0]["message"]
    status = http.get("/api/v1/bulk/bad-quote", headers=KEY_A).json()
    assert status["state"] == "failed" and "row 7" in status["error"]

    latin1 = upload(
        http, HEADER + row(0) + "u1,u1@example.com,fr,Zoé\n".encode("latin-1"), params("latin-1")
    )
    assert "UTF-8" in assert_error(latin1, 400, "malformed_csv")["message"]

    commands.poll(0.5)
    # no-user-id stopped at its header: no batch was created for it.
    creates = [m for m in commands.messages if m.value["kind"] == "create"][len(creates_before) :]
    uploads = {
        http.get(f"/api/v1/batches/{m.key}", headers=KEY_A).json()["upload_id"] for m in creates
    }
    assert "no-user-id" not in uploads and uploads <= {"bad-quote", "latin-1"}


def test_a_failed_upload_resumes_with_the_same_upload_id_without_appending_twice(
    http: httpx.Client, commands: TopicTail
) -> None:
    upload_id = f"resume-{uuid.uuid4().hex[:8]}"
    rows = [row(i) for i in range(450)]
    broken = upload(http, HEADER + b"".join(rows) + b'u450,"unclosed\n', params(upload_id))
    assert assert_error(broken, 400, "malformed_csv")["detail"][0]["field"] == "row 452"
    batch_id = http.get(f"/api/v1/bulk/{upload_id}", headers=KEY_A).json()["batch_id"]
    commands.wait_for(lambda _m: len(of_batch(commands, batch_id, "append")) == 2, "2 chunks")
    first_attempt = {m.value["command_id"]: m for m in of_batch(commands, batch_id, "append")}

    fixed = upload(http, HEADER + b"".join(rows) + row(450) + row(451), params(upload_id))
    assert fixed.status_code == 202, fixed.text
    assert fixed.json()["rows_accepted"] == 452
    commands.wait_for(lambda _m: of_batch(commands, batch_id, "close"), "close")
    appends = of_batch(commands, batch_id, "append")
    ids = [m.value["command_id"] for m in appends]
    chunk = [command_id_for(batch_id, f"chunk-{n}") for n in range(3)]
    # The first two chunks are sent again with the same ids (the batch stage applies a
    # command id once), the third is new.
    assert ids == [chunk[0], chunk[1], chunk[0], chunk[1], chunk[2]]
    for again in appends[2:4]:
        before = first_attempt[again.value["command_id"]].value["requests"]
        users = [r["recipients"][0]["user_id"] for r in again.value["requests"]]
        assert users == [r["recipients"][0]["user_id"] for r in before]
    creates = of_batch(commands, batch_id, "create")
    assert len({(m.value["command_id"], m.value["token_sha256"]) for m in creates}) == 1


def test_limits_and_refusals(
    http: httpx.Client, commands: TopicTail, scoped_keys: dict[str, dict[str, str]]
) -> None:
    def endless() -> Iterator[bytes]:
        yield HEADER + row(0)
        for _ in range(MAX_CSV_BYTES // 100_000 + 2):
            yield (b"x" * 999 + b"\n") * 100  # rows of one field: rejected, cheap to read

    over = upload(http, endless(), params("too-big"))
    assert_error(over, 413, "payload_too_large")
    assert http.get("/api/v1/bulk/too-big", headers=KEY_A).json()["state"] == "failed"
    declared = http.post(
        "/api/v1/bulk",
        params=params(),
        content=b"x" * (MAX_CSV_BYTES + 1),
        headers={**KEY_A, **CSV},
    )
    assert_error(declared, 413, "payload_too_large")

    assert_error(
        upload(http, HEADER, params(), **{"Content-Type": "application/json"}),
        415,
        "unsupported_media_type",
    )
    assert_error(
        upload(http, HEADER, params(), **{"Content-Type": "text/csv; charset=latin-1"}),
        415,
        "unsupported_media_type",
    )
    no_channels = upload(http, HEADER, {"template_id": "welcome"})
    assert "query.channels" in assert_error(no_channels, 422, "validation_failed")["message"]
    neither = upload(http, HEADER, {"channels": "email"})
    assert assert_error(neither, 422, "validation_failed")["detail"][0]["field"] == "query.content"
    assert_error(upload(http, HEADER, params(upload_id="../etc")), 422, "validation_failed")

    assert_error(
        http.post("/api/v1/bulk", params=params(), content=HEADER, headers=CSV), 401, "unauthorized"
    )
    assert_error(
        http.post(
            "/api/v1/bulk", params=params(), content=HEADER, headers={**scoped_keys["read"], **CSV}
        ),
        403,
        "forbidden",
    )

    done = upload(http, HEADER + row(1), params("mine"))
    assert done.status_code == 202, done.text
    assert http.get("/api/v1/bulk/mine", headers=scoped_keys["read"]).status_code == 200
    assert_error(http.get("/api/v1/bulk/mine", headers=scoped_keys["send"]), 403, "forbidden")
    assert_error(http.get("/api/v1/bulk/mine", headers=KEY_B), 404, "not_found")
    assert_error(http.delete("/api/v1/bulk/mine", headers=KEY_B), 404, "not_found")
    assert_error(http.get("/api/v1/bulk/nope", headers=KEY_A), 404, "not_found")
    assert_error(upload(http, HEADER + row(1), params("mine")), 409, "conflict")


def test_an_idempotency_key_replays_the_upload_answer(
    http: httpx.Client, commands: TopicTail
) -> None:
    key = f"bulk-{uuid.uuid4()}"
    body = HEADER + b"".join(row(i) for i in range(3))
    first = upload(http, body, params(), **{"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    again = upload(http, body, params(), **{"Idempotency-Key": key})
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = upload(http, body, params(priority="high"), **{"Idempotency-Key": key})
    assert_error(other, 422, "unprocessable")
    # Same parameters and length, other rows: a different request, not a replay.
    swapped = body.replace(b"u0", b"x0")
    assert len(swapped) == len(body) and swapped != body
    assert_error(upload(http, swapped, params(), **{"Idempotency-Key": key}), 422, "unprocessable")

    batch_id = first.json()["batch_id"]
    commands.wait_for(lambda _m: of_batch(commands, batch_id, "close"), "close")
    commands.poll(0.5)
    assert len(of_batch(commands, batch_id, "append")) == 1


def test_upload_batch_ids_cannot_be_computed_from_the_upload_id(http: httpx.Client) -> None:
    """They were uuid5(tenant:upload_id): a tenant could compute another's batch id (issue 21,
    MEDIUM 8). Now random, found again by a retry of the same upload."""
    upload_id = f"same-{uuid.uuid4().hex[:8]}"
    derived = {
        str(uuid.uuid5(uuid.UUID("5d0f6a4e-2b1c-4f7a-9e3d-8c6b1a2f4e51"), f"{t}:{upload_id}"))
        for t in ("tenant-a", "tenant-b")
    }
    a = upload(http, HEADER + row(0), params(upload_id))
    b = upload(http, HEADER + row(0), params(upload_id), **KEY_B)
    assert a.status_code == 202 and b.status_code == 202, (a.text, b.text)
    ids = {a.json()["batch_id"], b.json()["batch_id"]}
    assert len(ids) == 2 and not ids & derived
    status = http.get(f"/api/v1/bulk/{upload_id}", headers=KEY_A).json()
    assert status["batch_id"] == a.json()["batch_id"]
