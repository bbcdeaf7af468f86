"""Both framings are read by a registry codec; a registry-less codec names what it lacks."""

from __future__ import annotations

import uuid

import pytest

from schemas import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, SchemaCatalog, build_codec
from schemas.errors import CorruptMessageError

STATUS = {
    "event_id": "e1",
    "notification_id": "n1",
    "request_id": "r1",
    "tenant_id": "acme",
    "batch_id": None,
    "channel": "email",
    "recipient_id": "u1",
    "status": "sent",
    "stage": "deliver",
    "reason": None,
    "retriable": False,
    "provider": None,
    "provider_message_id": None,
    "attempt": 0,
    "occurred_at": 1,
    "request_occurred_at": 1,
    "deferred_until": None,
}


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load()


def record(catalog: SchemaCatalog) -> dict:
    """A valid StatusEvent: the fields above, defaults for any the schema gained since."""
    names = {field["name"] for field in catalog.entry("StatusEvent").parsed["fields"]}
    return {k: v for k, v in STATUS.items() if k in names}


def test_a_registry_codec_reads_single_object_and_confluent_framed_records(
    catalog: SchemaCatalog,
) -> None:
    value = record(catalog)
    single_object = build_codec(None, catalog).encode("StatusEvent", value)
    registry = build_codec(f"mock://{uuid.uuid4().hex}", catalog)
    confluent = registry.encode("StatusEvent", value)
    assert single_object[:2] == SINGLE_OBJECT_MAGIC and confluent[:1] == CONFLUENT_MAGIC
    assert registry.decode(single_object, "StatusEvent") == registry.decode(
        confluent, "StatusEvent"
    )
    assert registry.decode(single_object, "StatusEvent")["notification_id"] == "n1"


def test_a_registry_less_codec_refuses_confluent_framing_naming_the_setting(
    catalog: SchemaCatalog,
) -> None:
    confluent = build_codec(f"mock://{uuid.uuid4().hex}", catalog).encode(
        "StatusEvent", record(catalog)
    )
    with pytest.raises(CorruptMessageError, match="SCHEMA_REGISTRY_URL"):
        build_codec(None, catalog).decode(confluent, "StatusEvent")


@pytest.mark.parametrize("garbage", [b"", b"\x01\x02\x03", None])
def test_neither_framing_is_a_clear_error(catalog: SchemaCatalog, garbage: object) -> None:
    for codec in (build_codec(None, catalog), build_codec(f"mock://{uuid.uuid4().hex}", catalog)):
        with pytest.raises(CorruptMessageError):
            codec.decode(garbage, "StatusEvent")  # type: ignore[arg-type]
