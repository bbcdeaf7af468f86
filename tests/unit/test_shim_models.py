"""The shim's input validation and error answers, without a broker or a database.

The producer is a fake; the codec is the real one, so what the shim writes is checked
against schemas/notification_request.avsc.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api_shim.app import create_app
from api_shim.models import MAX_RECIPIENTS, Channel, Priority
from api_shim.producer import ProduceError, ProduceTimeout
from connectors.read_model import make_engine
from core.ids import notification_id
from core.settings import Settings
from schemas import SchemaCatalog, build_codec

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
KEY = {"X-API-Key": "key-a"}
VALID: dict[str, Any] = {
    "recipients": [{"user_id": "u1", "email": "u1@example.com"}],
    "channels": ["email", "in_app"],
    "content": {"subject": "Hi {{ name }}", "text": "Hello"},
    "data": {"name": "Ada"},
}


class FakeProducer:
    """Records what would be produced; `fail` makes the next produce raise."""

    ack_timeout = 0.1

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail: Exception | None = None

    async def produce(self, topic: str, **kwargs: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append({"topic": topic, **kwargs})

    def list_topics(self, timeout: float) -> set[str]:
        return set()


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[FakeProducer, TestClient]]:
    """One app for the module (starting one costs its views' threads); tests reset it."""
    settings = Settings(
        shim_api_keys={"key-a": "tenant-a", "key-b": "tenant-b"},
        topic_prefix="unit.",
        database_url="sqlite://",
        # No broker here: the shim's views of config topics stay empty (bootstrap keys only),
        # and start-up does not wait for them.
        kafka_bootstrap_servers="127.0.0.1:9",
        shim_view_catchup_seconds=0.0,
    )
    producer = FakeProducer()
    engine = make_engine("sqlite://")
    app = create_app(settings, producer=producer, engine=engine)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield producer, test_client
    engine.dispose()


@pytest.fixture
def producer(shared: tuple[FakeProducer, TestClient]) -> FakeProducer:
    fake = shared[0]
    fake.sent.clear()
    fake.fail = None
    return fake


@pytest.fixture
def client(shared: tuple[FakeProducer, TestClient], producer: FakeProducer) -> TestClient:
    return shared[1]


def _post(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/api/v1/notifications", json=body, headers=KEY if headers is None else headers
    )


def _fields(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_failed"
    return {d["field"]: d["message"] for d in body["detail"]}


def _with(**changes: Any) -> dict[str, Any]:
    return {**VALID, **changes}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "an X-API-Key header or an Authorization: Bearer token is required"),
        ({"X-API-Key": "nope"}, "unknown API key"),
    ],
)
def test_missing_or_unknown_key_is_401(
    client: TestClient, headers: dict[str, str], message: str
) -> None:
    response = _post(client, VALID, headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.json()["message"] == message


def test_401_comes_before_body_validation(client: TestClient) -> None:
    assert _post(client, {"recipients": []}, {}).status_code == 401


@pytest.mark.parametrize(
    ("body", "field", "message_part"),
    [
        (_with(recipients=[{"email": "a@example.com"}]), "recipients.0.user_id", "Field required"),
        (_with(recipients=[]), "recipients", "at least 1 item"),
        (
            _with(recipients=[{"user_id": f"u{i}"} for i in range(MAX_RECIPIENTS + 1)]),
            "recipients",
            "at most 1000",
        ),
        (_with(recipients=[{"user_id": "u1"}, {"user_id": "u1"}]), "recipients", "more than once"),
        (_with(recipients=[{"user_id": ""}]), "recipients.0.user_id", "at least 1 character"),
        (
            _with(recipients=[{"user_id": "u1", "email": "not-an-email"}]),
            "recipients.0.email",
            "should match pattern",
        ),
        (
            _with(recipients=[{"user_id": "u1", "phone": "call me"}]),
            "recipients.0.phone",
            "should match pattern",
        ),
        (_with(channels=[]), "channels", "at least 1 item"),
        (_with(channels=["email", "fax"]), "channels.1", "Input should be"),
        (_with(content=None), "content", "either template_id or content is required"),
        (_with(template_id="welcome"), "content", "not both"),
        (_with(content={}), "content.html", "at least one of subject, text or html"),
        (_with(content={"html": "x" * (256 * 1024 + 1)}), "content.html", "at most 262144"),
        (_with(data=[1, 2]), "data", "valid dictionary"),
        (_with(data={"blob": "x" * (256 * 1024)}), "data", "at most 262144"),
        (_with(priority="urgent"), "priority", "Input should be"),
        (_with(metadata={"k": 1}), "metadata.k", "valid string"),
        (_with(metadata={"k": "v" * 1025}), "metadata.k", "at most 1024 characters"),
        (_with(metadata={"k" * 129: "v"}), "metadata." + "k" * 129 + ".[key]", "at most 128"),
        (
            _with(recipients=[{"user_id": "u1", "addresses": {"webhook": "h" * 2049}}]),
            "recipients.0.addresses.webhook",
            "at most 2048 characters",
        ),
        (_with(colour="blue"), "colour", "Extra inputs are not permitted"),
        (_with(category="promo"), "category", "Input should be"),
        (_with(template_version=2), "template_version", "only for a template_id"),
        (
            _with(template_id="welcome", content=None, template_version=0),
            "template_version",
            "greater than or equal to 1",
        ),
        (_with(send_at="2030-01-01T09:00:00"), "send_at", "timezone info"),
        (_with(send_at="2999-01-01T09:00:00Z"), "send_at", "at most 366 days ahead"),
    ],
)
def test_bad_body_is_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str, message_part: str
) -> None:
    fields = _fields(_post(client, body))
    assert field in fields, fields
    assert message_part in fields[field]


def test_body_that_is_not_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/api/v1/notifications",
        content=b"{not json",
        headers={**KEY, "Content-Type": "application/json"},
    )
    assert "body" in _fields(response)


def test_missing_body_is_422(client: TestClient) -> None:
    response = client.post("/api/v1/notifications", headers=KEY)
    assert _fields(response) == {"body": "Field required"}


def test_accepted_request_is_produced_keyed_by_first_recipient(
    client: TestClient, producer: FakeProducer
) -> None:
    body = _with(
        recipients=[{"user_id": "u1"}, {"user_id": "u2", "locale": "fr"}],
        idempotency_key="from-body",
        metadata={"source": "unit"},
    )
    response = _post(client, body, {**KEY, "Idempotency-Key": "from-header"})
    assert response.status_code == 202, response.text
    accepted = response.json()
    request_id = accepted["request_id"]
    assert accepted["notifications"] == [
        {
            "notification_id": notification_id("tenant-a", request_id, user, channel),
            "user_id": user,
            "channel": channel,
        }
        for user in ("u1", "u2")
        for channel in ("email", "in_app")
    ]
    # The request, then the answer kept for the Idempotency-Key.
    sent, remembered = producer.sent
    assert remembered["topic"] == "unit.shim.idempotency"
    assert sent["topic"] == "unit.notifications.requests"
    assert sent["key"] == b"tenant-a:u1"
    assert sent["headers"]["traceparent"].startswith(b"00-")
    codec = build_codec(None, SchemaCatalog.load())
    record = codec.decode(sent["value"], "NotificationRequest")
    assert record["request_id"] == request_id
    assert record["tenant_id"] == "tenant-a"
    assert record["idempotency_key"] == "from-header"
    assert [r["user_id"] for r in record["recipients"]] == ["u1", "u2"]
    assert record["recipients"][1]["locale"] == "fr"
    assert record["channels"] == ["email", "in_app"]
    assert json.loads(record["data_json"]) == {"name": "Ada"}
    assert record["priority"] == "normal"
    assert record["metadata"] == {"source": "unit"}


def test_send_at_category_and_template_version_reach_the_request_record(
    client: TestClient, producer: FakeProducer
) -> None:
    """They are in the Kafka request schema and now in the HTTP body too (issue 19, item 3);
    marketing takes the bulk lane, and send_at travels as epoch milliseconds."""
    codec = build_codec(None, SchemaCatalog.load())
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    body = _with(
        template_id="welcome",
        content=None,
        template_version=3,
        category="marketing",
        send_at=send_at.isoformat(),
    )
    response = _post(client, body)
    assert response.status_code == 202, response.text
    sent = producer.sent[0]
    assert sent["topic"] == "unit.notifications.requests.bulk"
    record = codec.decode(sent["value"], "NotificationRequest")
    assert record["template_version"] == 3
    assert record["category"] == "marketing"
    assert record["send_at"] == int(send_at.timestamp() * 1000)

    producer.sent.clear()
    past = _post(client, _with(send_at="2020-01-01T00:00:00+02:00"))
    assert past.status_code == 202, past.text  # a time already past: sent now (enrich)
    record = codec.decode(producer.sent[0]["value"], "NotificationRequest")
    assert record["send_at"] == int(datetime(2019, 12, 31, 22, tzinfo=UTC).timestamp() * 1000)
    assert record["category"] is None and record["template_version"] is None


def test_duplicate_channels_are_ignored(client: TestClient, producer: FakeProducer) -> None:
    response = _post(client, _with(channels=["sms", "sms"]))
    assert response.status_code == 202
    assert [n["channel"] for n in response.json()["notifications"]] == ["sms"]


@pytest.mark.parametrize(
    ("failure", "message_part"),
    [
        (ProduceTimeout("no acknowledgement"), "did not acknowledge"),
        (ProduceError("Broker: Topic authorization failed"), "Topic authorization failed"),
    ],
)
def test_produce_failure_is_a_clear_503(
    client: TestClient, producer: FakeProducer, failure: Exception, message_part: str
) -> None:
    producer.fail = failure
    response = _post(client, VALID)
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "unavailable"
    assert message_part in body["message"]
    assert "Traceback" not in response.text


def test_status_of_unknown_notification_is_404(client: TestClient) -> None:
    response = client.get("/api/v1/notifications/nope", headers=KEY)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_ready_is_503_when_the_request_topic_is_missing(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    # The kind of failure only: /ready is unauthenticated (issue 21, LOW), the log has the rest.
    assert response.json()["checks"]["kafka"] == "failed (RuntimeError)"
    assert "does not exist" not in response.text
    assert client.get("/health").json() == {"status": "ok", "checks": {}}


def test_openapi_documents_the_answers(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/v1/notifications"]["post"]
    assert {"202", "401", "422", "503"} <= set(post["responses"])
    get = spec["paths"]["/api/v1/notifications/{notification_id}"]["get"]
    assert {"200", "401", "404", "503"} <= set(get["responses"])


@pytest.mark.parametrize(("enum", "schema"), [(Channel, "channel"), (Priority, "priority")])
def test_enums_match_the_avro_schemas(enum: Any, schema: str) -> None:
    symbols = json.loads((SCHEMAS / f"{schema}.avsc").read_text())["symbols"]
    assert [member.value for member in enum] == symbols


def test_every_documented_422_is_the_error_body_the_shim_sends(client: TestClient) -> None:
    """One error model (issue 14): FastAPI's own HTTPValidationError (loc/msg/type) is never
    documented, since the shim answers ErrorBody (error/message/detail)."""
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    documented = [
        (path, method, answer["content"]["application/json"]["schema"])
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if (answer := operation.get("responses", {}).get("422")) and "content" in answer
    ]
    assert documented
    for path, method, schema in documented:
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method)
    invalid = _post(client, {})
    assert invalid.status_code == 422
    assert set(invalid.json()) == {"error", "message", "detail"}


@pytest.mark.parametrize(
    ("value", "taken"), [(3, 3), (3.0, 3), (True, None), ("3", None), (3.5, None)]
)
def test_integers_are_json_schema_integers(value: Any, taken: int | None) -> None:
    """3.0 is an integer to JSON Schema (and to the document's clients); true and "3" are
    not numbers, and lax pydantic took false as 0."""
    from pydantic import TypeAdapter, ValidationError

    from api_shim.models import WholeNumber

    adapter: TypeAdapter[int] = TypeAdapter(WholeNumber)
    if taken is None:
        with pytest.raises(ValidationError):
            adapter.validate_json(json.dumps(value))
    else:
        parsed = adapter.validate_json(json.dumps(value))
        assert parsed == taken and type(parsed) is int


def test_the_document_states_template_or_content_and_content_not_empty() -> None:
    """The either/or rules are in the OpenAPI document, not only in the validators."""
    schemas = create_app().openapi()["components"]["schemas"]
    assert [s["required"] for s in schemas["NotificationCreate"]["oneOf"]] == [
        ["template_id"],
        ["content"],
    ]
    assert [s["required"] for s in schemas["Content"]["anyOf"]] == [["subject"], ["text"], ["html"]]
