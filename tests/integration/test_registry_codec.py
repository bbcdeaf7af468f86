"""The Confluent codec against a real Confluent-compatible registry (scripts/registry.sh).

Run: ``scripts/registry.sh start``, then set ``TEST_SCHEMA_REGISTRY_URL=$(scripts/registry.sh
url)`` and run this module with pytest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from schemas import ConfluentCodec, SchemaCatalog, UnknownSchemaError, build_codec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from fixtures.avro_samples import sample_record

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EVOLUTION = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "evolution"
CATALOG = SchemaCatalog.load(SCHEMAS)


@pytest.fixture(scope="module")
def registry_url() -> str:
    url = os.environ.get("TEST_SCHEMA_REGISTRY_URL")
    if not url:
        pytest.skip("TEST_SCHEMA_REGISTRY_URL is not set (scripts/registry.sh start; .. url)")
    return url


def client(url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": url})


@pytest.mark.parametrize("name", CATALOG.record_names())
def test_round_trip_through_the_registry(registry_url: str, name: str) -> None:
    record = sample_record(CATALOG.entry(name))
    data = build_codec(registry_url, CATALOG).encode(name, record)
    # A fresh codec has no cached ids: it fetches the writer schema by id.
    assert ConfluentCodec(CATALOG, client(registry_url)).decode(data, name) == record
    registered = client(registry_url).get_latest_version(CATALOG.full_name(name))
    assert registered.schema_id == int.from_bytes(data[1:5], "big")


def test_old_data_decodes_with_new_reader(registry_url: str) -> None:
    v1 = SchemaCatalog.load(EVOLUTION / "v1")
    v2 = SchemaCatalog.load(EVOLUTION / "v2")
    record = {"widget_id": "w1", "size": "small", "count": 2}
    data = ConfluentCodec(v1, client(registry_url)).encode("Widget", record)
    decoded = ConfluentCodec(v2, client(registry_url)).decode(data, "Widget")
    assert decoded == {**record, "color": "blue", "note": None}


def test_unknown_id(registry_url: str) -> None:
    codec = ConfluentCodec(CATALOG, client(registry_url))
    with pytest.raises(UnknownSchemaError):
        codec.decode(b"\x00\x7f\xff\xff\xf0" + b"\x00" * 10, "Notification")
