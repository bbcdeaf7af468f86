"""The Avro catalog and codecs: both framings, schema resolution, typed errors, Faust codecs."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from faust.serializers import codecs as faust_codecs
from fixtures.avro_samples import sample_record

from schemas import (
    CatalogError,
    Codec,
    ConfluentCodec,
    CorruptMessageError,
    DecodeError,
    EncodeError,
    RecordValidationError,
    RegistryUnavailableError,
    SchemaCatalog,
    SchemaMismatchError,
    SchemaNotFoundError,
    SingleObjectCodec,
    UnknownSchemaError,
    build_codec,
    codec_name,
    register_faust_codecs,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EVOLUTION = Path(__file__).resolve().parent / "fixtures" / "evolution"
CATALOG = SchemaCatalog.load(SCHEMAS)
RECORDS = CATALOG.record_names()


def mock_registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://codec-tests"})


@pytest.fixture(params=["single-object", "confluent"])
def codec(request: pytest.FixtureRequest) -> Codec:
    url = None if request.param == "single-object" else "mock://codec-tests"
    return build_codec(url, CATALOG)


def notification() -> dict[str, Any]:
    return sample_record(CATALOG.entry("Notification"))


# -- catalog ------------------------------------------------------------------------------------


def test_catalog_loads_every_avsc_and_resolves_cross_file_types() -> None:
    assert len(CATALOG.record_names()) >= 10
    assert "io.notifications.Notification" in RECORDS
    assert CATALOG.entry("Notification") is CATALOG.entry("io.notifications.Notification")
    canonical = CATALOG.canonical("Notification")
    # Self-contained, each named type defined exactly once (Content is used twice).
    for name in ("Channel", "Recipient", "Content", "Priority"):
        assert canonical.count(f'"name":"io.notifications.{name}"') == 1
    assert '"name":"rendered","type":["null","io.notifications.Content"]' in canonical  # reference


def _rabin64(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification writes it."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.mark.parametrize("name", RECORDS)
def test_fingerprint_is_little_endian_crc64_avro_of_canonical_form(name: str) -> None:
    expected = _rabin64(CATALOG.canonical(name).encode()).to_bytes(8, "little")
    assert CATALOG.fingerprint(name) == expected
    assert CATALOG.writer_for_fingerprint(expected).full_name == CATALOG.full_name(name)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(SchemaNotFoundError, match=r"io\.notifications\.Notification"):
        CATALOG.entry("Nope")


def test_unresolvable_reference_is_a_catalog_error(tmp_path: Path) -> None:
    (tmp_path / "a.avsc").write_text(
        '{"type": "record", "name": "A", "fields": [{"name": "b", "type": "B"}]}'
    )
    with pytest.raises(CatalogError, match="unknown type 'B'"):
        SchemaCatalog.load(tmp_path)


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("full", [True, False], ids=["all-fields", "minimal"])
@pytest.mark.parametrize("name", RECORDS)
def test_every_record_round_trips(codec: Codec, name: str, full: bool) -> None:
    record = sample_record(CATALOG.entry(name), full=full)
    data = codec.encode(name, record)
    decoded = codec.decode(data, name)
    if full:
        assert decoded == record
    else:  # left-out fields come back with their defaults
        assert _contains(decoded, record)
        assert codec.encode(name, decoded) == data


def _contains(decoded: Any, sent: Any) -> bool:
    if isinstance(sent, dict):
        return all(k in decoded and _contains(decoded[k], v) for k, v in sent.items())
    return bool(decoded == sent)


def test_framings() -> None:
    record = notification()
    single = build_codec(None, CATALOG).encode("Notification", record)
    assert single[:2] == b"\xc3\x01"
    assert single[2:10] == CATALOG.fingerprint("Notification")
    confluent = build_codec("mock://framing", CATALOG).encode("Notification", record)
    assert confluent[0] == 0
    assert int.from_bytes(confluent[1:5], "big") >= 1
    assert single[10:] == confluent[5:]  # the same Avro body


def test_confluent_registers_expanded_schema_under_record_name() -> None:
    registry = mock_registry()
    codec = ConfluentCodec(CATALOG, registry)
    data = codec.encode("Notification", notification())
    registered = registry.get_latest_version("io.notifications.Notification")
    assert registered.schema_id == int.from_bytes(data[1:5], "big")
    assert registered.schema.schema_str == CATALOG.expanded_json("Notification")
    assert codec.schema_id("Notification") == registered.schema_id  # cached, not re-registered


def test_confluent_decodes_with_a_fresh_codec_fetching_the_writer_by_id() -> None:
    registry = mock_registry()
    data = ConfluentCodec(CATALOG, registry).encode("Notification", notification())
    assert ConfluentCodec(CATALOG, registry).decode(data, "Notification") == notification()


# -- evolution: old data, current reader ---------------------------------------------------------

V1 = SchemaCatalog.load(EVOLUTION / "v1")
WIDGET_V1 = {"widget_id": "w1", "size": "large", "count": 3}


def test_single_object_v1_data_decodes_with_v2_reader_via_history() -> None:
    data = SingleObjectCodec(V1).encode("Widget", WIDGET_V1)
    v2 = SchemaCatalog.load(EVOLUTION / "v2", history_directory=EVOLUTION / "v1")
    assert v2.fingerprint("Widget") != V1.fingerprint("Widget")
    decoded = SingleObjectCodec(v2).decode(data, "Widget")
    assert decoded == {**WIDGET_V1, "color": "blue", "note": None}


def test_single_object_v1_data_without_history_is_unknown() -> None:
    data = SingleObjectCodec(V1).encode("Widget", WIDGET_V1)
    with pytest.raises(UnknownSchemaError):
        SingleObjectCodec(SchemaCatalog.load(EVOLUTION / "v2")).decode(data, "Widget")


def test_confluent_v1_data_decodes_with_v2_reader() -> None:
    registry = mock_registry()  # the registry is the history
    data = ConfluentCodec(V1, registry).encode("Widget", WIDGET_V1)
    v2 = SchemaCatalog.load(EVOLUTION / "v2")
    decoded = ConfluentCodec(v2, registry).decode(data, "Widget")
    assert decoded == {**WIDGET_V1, "color": "blue", "note": None}


def test_incompatible_reader_is_a_schema_mismatch() -> None:
    data = SingleObjectCodec(V1).encode("Widget", WIDGET_V1)
    breaking = SchemaCatalog.load(EVOLUTION / "v2_breaking", history_directory=EVOLUTION / "v1")
    with pytest.raises(SchemaMismatchError):
        SingleObjectCodec(breaking).decode(data, "Widget")


# -- bad input ----------------------------------------------------------------------------------


def test_single_object_corrupt_messages() -> None:
    codec = SingleObjectCodec(CATALOG)
    good = codec.encode("Notification", notification())
    cases = {
        "bad magic": b"\x00\x01" + good[2:],
        "short header": good[:6],
        "truncated body": good[:-5],
        "trailing bytes": good + b"\x00",
        "garbage body": good[:10] + b"\xff" * 40,
        "empty": b"",
    }
    for label, data in cases.items():
        with pytest.raises(CorruptMessageError):
            codec.decode(data, "Notification")
            pytest.fail(label)


def test_single_object_unknown_fingerprint() -> None:
    codec = SingleObjectCodec(CATALOG)
    good = codec.encode("Notification", notification())
    with pytest.raises(UnknownSchemaError, match="abababababababab"):
        codec.decode(good[:2] + b"\xab" * 8 + good[10:], "Notification")


def test_confluent_corrupt_messages_and_unknown_id() -> None:
    codec = build_codec("mock://corrupt", CATALOG)
    good = codec.encode("Notification", notification())
    for data in (b"\x01" + good[1:], good[:3], good[:-5], good[:5] + b"\xff" * 40):
        with pytest.raises(CorruptMessageError):
            codec.decode(data, "Notification")
    with pytest.raises(UnknownSchemaError, match="4242"):
        codec.decode(b"\x00" + (4242).to_bytes(4, "big") + good[5:], "Notification")


def test_writer_of_another_record_is_a_mismatch(codec: Codec) -> None:
    data = codec.encode("Recipient", {"user_id": "u1"})
    with pytest.raises(SchemaMismatchError, match=r"io\.notifications\.Recipient"):
        codec.decode(data, "Notification")


def test_random_bytes_never_escape_as_library_errors(codec: Codec) -> None:
    good = codec.encode("Notification", notification())
    header = good[:10] if good[0] == 0xC3 else good[:5]
    rng = random.Random(1234)
    for _ in range(500):
        noise = rng.randbytes(rng.randrange(0, 80))
        for data in (noise, header + noise, good[: rng.randrange(len(good))]):
            with contextlib.suppress(DecodeError):
                codec.decode(data, "Notification")


def test_non_bytes_is_corrupt(codec: Codec) -> None:
    with pytest.raises(CorruptMessageError):
        codec.decode(None, "Notification")  # type: ignore[arg-type]


def test_registry_outage_is_retriable_on_decode() -> None:
    class DownRegistry:
        def get_schema(self, schema_id: int) -> Any:
            raise ConnectionError("registry down")

    codec = ConfluentCodec(CATALOG, DownRegistry())  # type: ignore[arg-type]
    with pytest.raises(RegistryUnavailableError) as caught:
        codec.decode(b"\x00\x00\x00\x00\x07" + b"\x00" * 8, "Notification")
    assert isinstance(caught.value, DecodeError)
    assert isinstance(caught.value.__cause__, ConnectionError)


# -- validation ---------------------------------------------------------------------------------


def test_missing_required_field_names_the_field(codec: Codec) -> None:
    record = notification()
    del record["tenant_id"]
    with pytest.raises(RecordValidationError, match=r"^Notification\.tenant_id: ") as caught:
        codec.encode("Notification", record)
    assert caught.value.path == "Notification.tenant_id"
    assert isinstance(caught.value, EncodeError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"recipient": {"user_id": None}},
            "Notification.recipient.user_id: expected string, got None",
        ),
        ({"attempt": "3"}, "Notification.attempt: expected int, got str"),
        ({"metadata": {"a": 1}}, "Notification.metadata['a']: expected string, got int"),
        ({"content": {"subject": 1}}, "Notification.content.subject: expected null or string"),
        ({"channel": "fax"}, "Notification.channel: expected one of Channel"),
    ],
)
def test_invalid_values_name_the_field_path(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordValidationError) as caught:
        CATALOG.validate("Notification", {**notification(), **change})
    assert str(caught.value).startswith(message)


def test_missing_field_with_default_is_fine() -> None:
    record = notification()
    del record["priority"]
    CATALOG.validate("Notification", record)


def test_nested_array_path() -> None:
    record = sample_record(CATALOG.entry("NotificationRequest"))
    record["recipients"] = [{"user_id": "a"}, {"email": "b@example.com"}]
    with pytest.raises(
        RecordValidationError, match=r"NotificationRequest\.recipients\[1\]\.user_id"
    ):
        CATALOG.validate("NotificationRequest", record)


# -- Faust --------------------------------------------------------------------------------------


@pytest.fixture
def faust_registry() -> Iterator[None]:
    saved = dict(faust_codecs.codecs)
    yield
    faust_codecs.codecs.clear()
    faust_codecs.codecs.update(saved)


@pytest.mark.usefixtures("faust_registry")
def test_faust_codecs_round_trip_by_name(codec: Codec) -> None:
    names = register_faust_codecs(codec, CATALOG)
    assert codec_name("io.notifications.Notification") == "avro:Notification"
    assert "avro:Notification" in names
    assert len(names) == len(RECORDS)
    record = notification()
    data = faust_codecs.dumps("avro:Notification", record)
    assert data == codec.encode("Notification", record)
    assert faust_codecs.loads("avro:Notification", data) == record
    chained = faust_codecs.dumps("avro:Notification|binary", record)
    assert faust_codecs.loads("avro:Notification|binary", chained) == record
    with pytest.raises(EncodeError):
        faust_codecs.dumps("avro:Notification", ["not", "a", "mapping"])


def test_mock_url_is_one_registry_per_url() -> None:
    record = notification()
    data = build_codec("mock://shared-scope", CATALOG).encode("Notification", record)
    assert build_codec("mock://shared-scope", CATALOG).decode(data, "Notification") == record
    with pytest.raises(UnknownSchemaError):
        build_codec("mock://other-scope", CATALOG).decode(data, "Notification")
