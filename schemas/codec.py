"""Avro codecs: one interface, two framings.

- ``SingleObjectCodec``: the Avro spec's single-object encoding, ``C3 01`` + the writer schema's
  8-byte CRC-64-AVRO fingerprint (little-endian) + the Avro body. Any process holding
  ``schemas/`` (and ``schemas/history/``) can read it; no registry needed.
- ``ConfluentCodec``: magic byte ``0`` + the 4-byte big-endian registry schema id + the body, the
  framing Kafka UI, kcat and Kafka Connect decode. Schemas are registered under the record's full
  name (RecordNameStrategy: the codec does not know the topic, and one record type may travel on
  several topics).

Both validate before encoding, and decode by resolving the writer schema and reading it into the
*current* reader schema with Avro schema resolution, so old data gains new fields' defaults.

The writer uses the configured framing; the reader goes by the first bytes. A topic written
before a registry was turned on (single-object) stays readable after it: ``ConfluentCodec``
reads both. ``SingleObjectCodec`` cannot read Confluent framing (only the registry knows what
a schema id means) and says so, naming ``SCHEMA_REGISTRY_URL``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from .catalog import SchemaCatalog, SchemaEntry, validate_entry
from .errors import (
    CorruptMessageError,
    EncodeError,
    RegistryUnavailableError,
    SchemaMismatchError,
    UnknownSchemaError,
)

__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "Codec",
    "ConfluentCodec",
    "SingleObjectCodec",
    "build_codec",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SO_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CF_HEADER = len(CONFLUENT_MAGIC) + 4
_MOCK_REGISTRIES: dict[str, SchemaRegistryClient] = {}


@runtime_checkable
class Codec(Protocol):
    """Encode records of a named schema to bytes and back."""

    def encode(self, schema_name: str, record: Mapping[str, Any]) -> bytes: ...

    def decode(self, data: bytes, schema_name: str) -> dict[str, Any]: ...

    def encodes_without_io(self, schema_name: str) -> bool:
        """True when `encode` of this schema is CPU only (no registry round trip): an
        asyncio caller may then run it inline instead of in a thread."""
        ...


@dataclass(frozen=True, slots=True)
class _Writer:
    """What decoding needs to know about a writer schema."""

    full_name: str
    parsed: Any
    fingerprint: bytes | None  # None when unknown (a registry schema with references)

    @classmethod
    def of(cls, entry: SchemaEntry) -> _Writer:
        return cls(entry.full_name, entry.parsed, entry.fingerprint)


class SingleObjectCodec:
    """Avro single-object encoding, writer schemas resolved from the catalog by fingerprint."""

    def __init__(self, catalog: SchemaCatalog) -> None:
        self.catalog = catalog

    def encode(self, schema_name: str, record: Mapping[str, Any]) -> bytes:
        entry = self.catalog.entry(schema_name)
        validate_entry(entry, record)
        return _write(entry, record, SINGLE_OBJECT_MAGIC + entry.fingerprint)

    def encodes_without_io(self, schema_name: str) -> bool:
        return True

    def decode(self, data: bytes, schema_name: str) -> dict[str, Any]:
        reader = self.catalog.entry(schema_name)
        if _starts_with(data, CONFLUENT_MAGIC) and len(data) >= _CF_HEADER:
            schema_id = int.from_bytes(data[1:_CF_HEADER], "big")
            raise CorruptMessageError(
                f"Confluent framing (registry schema id {schema_id}): this process has no schema "
                "registry to resolve it; set SCHEMA_REGISTRY_URL to read registry-framed messages"
            )
        _check_header(data, SINGLE_OBJECT_MAGIC, _SO_HEADER, "single-object")
        writer = self.catalog.writer_for_fingerprint(bytes(data[2:_SO_HEADER]))
        return _read(data, _SO_HEADER, _Writer.of(writer), reader)


class ConfluentCodec:
    """Confluent framing; schemas registered under their full record name, ids cached."""

    def __init__(self, catalog: SchemaCatalog, registry_client: SchemaRegistryClient) -> None:
        self.catalog = catalog
        self.registry = registry_client
        self._ids: dict[str, int] = {}
        self._writers: dict[int, _Writer] = {}
        # Messages written before the registry was turned on are single-object framed.
        self._single_object = SingleObjectCodec(catalog)

    def schema_id(self, schema_name: str) -> int:
        """The registry id of the current schema, registering it on first use."""
        entry = self.catalog.entry(schema_name)
        found = self._ids.get(entry.full_name)
        return found if found is not None else self._register(entry)

    def register_all(self) -> dict[str, int]:
        """Register every record schema now (at start-up), so no produce waits on the registry."""
        return {name: self.schema_id(name) for name in self.catalog.record_names()}

    def encodes_without_io(self, schema_name: str) -> bool:
        return self.catalog.entry(schema_name).full_name in self._ids

    def encode(self, schema_name: str, record: Mapping[str, Any]) -> bytes:
        entry = self.catalog.entry(schema_name)
        validate_entry(entry, record)
        schema_id = self._ids.get(entry.full_name)
        if schema_id is None:
            schema_id = self._register(entry)
        return _write(entry, record, CONFLUENT_MAGIC + schema_id.to_bytes(4, "big"))

    def decode(self, data: bytes, schema_name: str) -> dict[str, Any]:
        if _starts_with(data, SINGLE_OBJECT_MAGIC):
            return self._single_object.decode(data, schema_name)
        reader = self.catalog.entry(schema_name)
        _check_header(data, CONFLUENT_MAGIC, _CF_HEADER, "Confluent")
        schema_id = int.from_bytes(data[1:_CF_HEADER], "big")
        writer = self._writers.get(schema_id)
        if writer is None:
            writer = self._fetch(schema_id)
        return _read(data, _CF_HEADER, writer, reader)

    def _register(self, entry: SchemaEntry) -> int:
        try:
            schema_id = self.registry.register_schema(
                entry.full_name, Schema(entry.expanded_json, "AVRO")
            )
        except SchemaRegistryError as exc:
            if exc.http_status_code >= 500:
                raise RegistryUnavailableError(f"registering {entry.full_name}: {exc}") from exc
            # 409 is an incompatible change; any 4xx is permanent for this schema.
            raise EncodeError(f"the registry refused {entry.full_name}: {exc}") from exc
        except Exception as exc:  # transport errors of the registry's HTTP client
            raise RegistryUnavailableError(f"registering {entry.full_name}: {exc}") from exc
        self._ids[entry.full_name] = schema_id
        self._writers[schema_id] = _Writer.of(entry)
        return schema_id

    def _fetch(self, schema_id: int) -> _Writer:
        try:
            schema = self.registry.get_schema(schema_id)
            named: dict[str, Any] = {}
            self._resolve_references(schema, named, depth=0)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaError(f"registry has no schema with id {schema_id}") from exc
            raise RegistryUnavailableError(f"fetching schema id {schema_id}: {exc}") from exc
        except Exception as exc:
            raise RegistryUnavailableError(f"fetching schema id {schema_id}: {exc}") from exc
        if (schema.schema_type or "AVRO") != "AVRO" or schema.schema_str is None:
            raise SchemaMismatchError(f"schema id {schema_id} is {schema.schema_type}, not Avro")
        try:
            raw = json.loads(schema.schema_str)
            parsed = parse_schema(raw, named)
            # Self-contained: fingerprint it, so a writer equal to the reader skips resolution.
            fingerprint = None if schema.references else _fingerprint(raw)
        except Exception as exc:
            raise SchemaMismatchError(f"schema id {schema_id} does not parse: {exc}") from exc
        if not isinstance(parsed, dict) or "name" not in parsed:
            raise SchemaMismatchError(f"schema id {schema_id} is not a named type")
        writer = _Writer(parsed["name"], parsed, fingerprint)
        self._writers[schema_id] = writer
        return writer

    def _resolve_references(self, schema: Schema, named: dict[str, Any], depth: int) -> None:
        """Parse the schemas ``schema`` refers to (other producers may register that way)."""
        if depth > 32:
            raise SchemaMismatchError("schema references nest deeper than 32 levels")
        for ref in schema.references or ():
            if ref.subject is None or ref.version is None:
                continue
            referenced = self.registry.get_version(ref.subject, ref.version).schema
            if referenced is None or referenced.schema_str is None:
                continue
            self._resolve_references(referenced, named, depth + 1)
            parse_schema(json.loads(referenced.schema_str), named)


def build_codec(
    schema_registry_url: str | None,
    catalog: SchemaCatalog | None = None,
    *,
    registry_config: Mapping[str, Any] | None = None,
) -> Codec:
    """A ConfluentCodec when a registry URL is given, otherwise a SingleObjectCodec.

    ``mock://<scope>`` gives an in-process fake registry, shared by every codec built with the
    same URL. ``registry_config`` adds client settings such as ``basic.auth.user.info``.
    """
    catalog = catalog if catalog is not None else SchemaCatalog.load()
    if not schema_registry_url:
        return SingleObjectCodec(catalog)
    conf = {**(registry_config or {}), "url": schema_registry_url}
    if schema_registry_url.startswith("mock://"):
        # One fake registry per mock:// URL in a process (as Confluent's Java mock scopes do),
        # so a producer and a consumer built separately still share schema ids.
        client = _MOCK_REGISTRIES.get(schema_registry_url)
        if client is None:
            client = _MOCK_REGISTRIES[schema_registry_url] = SchemaRegistryClient.new_client(conf)
        return ConfluentCodec(catalog, client)
    return ConfluentCodec(catalog, SchemaRegistryClient(conf))


def _fingerprint(schema: Any) -> bytes:
    return bytes.fromhex(_fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def _starts_with(data: Any, magic: bytes) -> bool:
    return isinstance(data, bytes | bytearray | memoryview) and bytes(data[: len(magic)]) == magic


def _check_header(data: bytes, magic: bytes, header: int, framing: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptMessageError(f"expected bytes, got {type(data).__name__}")
    if len(data) < header:
        raise CorruptMessageError(f"{len(data)} bytes is shorter than a {framing} header")
    if data[: len(magic)] != magic:
        raise CorruptMessageError(
            f"not {framing} framing: starts with {bytes(data[: len(magic)]).hex()}, "
            f"expected {magic.hex()}"
        )


def _write(entry: SchemaEntry, record: Mapping[str, Any], header: bytes) -> bytes:
    buf = io.BytesIO()
    buf.write(header)
    try:
        schemaless_writer(buf, entry.parsed, record)
    except Exception as exc:  # validation passed, so this is a value fastavro cannot write
        raise EncodeError(f"{entry.name}: {exc}") from exc
    return buf.getvalue()


def _read(data: bytes, offset: int, writer: _Writer, reader: SchemaEntry) -> dict[str, Any]:
    if writer.full_name != reader.full_name and writer.full_name not in reader.aliases:
        raise SchemaMismatchError(
            f"message was written as {writer.full_name}, cannot read it as {reader.full_name}"
        )
    buf = io.BytesIO(data)
    buf.seek(offset)
    # Same schema: skip resolution, it is the common case and the faster path.
    reader_schema = None if writer.fingerprint == reader.fingerprint else reader.parsed
    try:
        record = schemaless_reader(buf, writer.parsed, reader_schema)
    except SchemaResolutionError as exc:
        raise SchemaMismatchError(
            f"{writer.full_name}: writer schema cannot be read as the current one: {exc}"
        ) from exc
    except Exception as exc:  # EOFError, UnicodeDecodeError, IndexError, ValueError, ...
        raise CorruptMessageError(f"{reader.name}: body does not decode: {exc!r}") from exc
    if buf.tell() != len(data):
        raise CorruptMessageError(
            f"{reader.name}: {len(data) - buf.tell()} bytes left over after the record"
        )
    if not isinstance(record, dict):
        raise CorruptMessageError(f"{reader.name}: decoded a {type(record).__name__}, not a record")
    return record
