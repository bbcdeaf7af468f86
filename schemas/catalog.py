"""The schema catalog: every .avsc in ``schemas/``, resolved, parsed and fingerprinted once.

Each .avsc holds one named type and may refer to types defined in other files by name. Instead
of parsing files in dependency order, the catalog collects every definition first and then
expands each top-level type into a self-contained schema (a named type is inlined where it first
occurs and referred to by full name after that, as Avro requires). That expanded form is what is
fingerprinted, registered with a schema registry and handed to fastavro, so adding an .avsc
needs no code change.

``history/*.avsc`` holds earlier versions of schemas. They are only used to recognise the writer
schema of old data (by fingerprint); decoding always reads into the current schema.
"""

from __future__ import annotations

import copy
import json
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import validate as _fastavro_validate

from .errors import (
    CatalogError,
    RecordValidationError,
    SchemaNotFoundError,
    UnknownSchemaError,
)

__all__ = ["DEFAULT_SCHEMA_DIR", "SchemaCatalog", "SchemaEntry"]

DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parent

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})
RECORDS = frozenset({"record", "error"})

# A definition as written: the JSON object and the namespace it was written in.
_Definitions = dict[str, tuple[dict[str, Any], str]]


@dataclass(frozen=True, slots=True, eq=False)
class SchemaEntry:
    """One named type, expanded and ready to use."""

    full_name: str
    type: str
    expanded: dict[str, Any] = field(repr=False)
    parsed: Any = field(repr=False)
    canonical: str = field(repr=False)
    fingerprint: bytes
    aliases: frozenset[str] = field(repr=False)
    named: Mapping[str, dict[str, Any]] = field(repr=False)
    source: Path | None = None

    @property
    def name(self) -> str:
        return self.full_name.rpartition(".")[2]

    @property
    def expanded_json(self) -> str:
        return json.dumps(self.expanded, separators=(",", ":"))

    @classmethod
    def from_expanded(cls, expanded: dict[str, Any], source: Path | None = None) -> SchemaEntry:
        """Build an entry from a self-contained schema (a top-level named type)."""
        try:
            parsed = parse_schema(copy.deepcopy(expanded))
            canonical = to_parsing_canonical_form(expanded)
        except Exception as exc:  # fastavro raises several types for a bad schema
            raise CatalogError(f"{source or 'schema'}: not a valid Avro schema: {exc}") from exc
        full_name, namespace = _full_name(expanded["name"], expanded.get("namespace", ""))
        named: _Definitions = {}
        _collect(expanded, "", named, source)
        return cls(
            full_name=full_name,
            type=expanded["type"],
            expanded=expanded,
            parsed=parsed,
            canonical=canonical,
            fingerprint=bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO")),
            aliases=frozenset(_full_name(a, namespace)[0] for a in expanded.get("aliases", ())),
            named={name: definition for name, (definition, _) in named.items()},
            source=source,
        )


class SchemaCatalog:
    """Current schemas by name, plus every known writer schema by fingerprint."""

    def __init__(self, entries: Iterable[SchemaEntry], history: Iterable[SchemaEntry] = ()) -> None:
        self._entries: dict[str, SchemaEntry] = {e.full_name: e for e in entries}
        by_short: dict[str, list[str]] = {}
        for full_name in self._entries:
            by_short.setdefault(full_name.rpartition(".")[2], []).append(full_name)
        # A short name is only a lookup key while it is unambiguous.
        self._lookup = dict(self._entries)
        for short, full_names in by_short.items():
            if len(full_names) == 1:
                self._lookup.setdefault(short, self._entries[full_names[0]])
        self._writers: dict[bytes, SchemaEntry] = {e.fingerprint: e for e in history}
        self._writers.update((e.fingerprint, e) for e in self._entries.values())

    @classmethod
    def load(
        cls,
        directory: Path | str = DEFAULT_SCHEMA_DIR,
        *,
        history_directory: Path | str | None = None,
    ) -> SchemaCatalog:
        """Read every ``*.avsc`` in ``directory`` and ``history_directory`` (default: ``history/``
        under ``directory``; a missing history directory is fine)."""
        directory = Path(directory)
        raw = _read_dir(directory)
        if not raw:
            raise CatalogError(f"no .avsc files in {directory}")
        definitions: _Definitions = {}
        for path, schema in raw:
            _collect(schema, "", definitions, path)
        entries = [_expand_file(path, schema, definitions) for path, schema in raw]

        history_dir = Path(history_directory) if history_directory else directory / "history"
        history = []
        for path, schema in _read_dir(history_dir):
            # An old version may define types inline; those win over today's definitions.
            own: _Definitions = {}
            _collect(schema, "", own, path)
            history.append(_expand_file(path, schema, {**definitions, **own}))
        return cls(entries, history)

    # -- lookup ---------------------------------------------------------------------------------

    def entry(self, name: str) -> SchemaEntry:
        """The current schema called ``name`` (short or full name)."""
        found = self._lookup.get(name)
        if found is None:
            raise SchemaNotFoundError(name, list(self._entries))
        return found

    def entries(self) -> list[SchemaEntry]:
        """Every current schema (records, enums, fixed), sorted by full name."""
        return [self._entries[n] for n in sorted(self._entries)]

    def record_names(self) -> list[str]:
        """Full names of every record type, sorted."""
        return sorted(n for n, e in self._entries.items() if e.type in RECORDS)

    def full_name(self, name: str) -> str:
        return self.entry(name).full_name

    def parsed(self, name: str) -> Any:
        """The fastavro-parsed schema, for ``schemaless_writer``/``schemaless_reader``."""
        return self.entry(name).parsed

    def canonical(self, name: str) -> str:
        """Parsing Canonical Form of the fully expanded schema."""
        return self.entry(name).canonical

    def fingerprint(self, name: str) -> bytes:
        """CRC-64-AVRO of the canonical form, 8 bytes little-endian (single-object encoding)."""
        return self.entry(name).fingerprint

    def expanded(self, name: str) -> dict[str, Any]:
        """The self-contained schema (what gets registered with a registry or put in history/)."""
        return copy.deepcopy(self.entry(name).expanded)

    def expanded_json(self, name: str) -> str:
        return self.entry(name).expanded_json

    def writer_for_fingerprint(self, fingerprint: bytes) -> SchemaEntry:
        """The current or historical schema with this fingerprint."""
        found = self._writers.get(bytes(fingerprint))
        if found is None:
            raise UnknownSchemaError(f"no known Avro schema has fingerprint {fingerprint.hex()}")
        return found

    # -- validation -----------------------------------------------------------------------------

    def validate(self, name: str, record: Mapping[str, Any]) -> None:
        """Raise RecordValidationError naming the first offending field path."""
        validate_entry(self.entry(name), record)


def validate_entry(entry: SchemaEntry, record: Mapping[str, Any]) -> None:
    # fastavro's C validator is the fast path; the slower walk below only runs to explain a failure.
    if _fastavro_validate(record, entry.parsed, raise_errors=False):
        return
    problem = _explain(entry.expanded, record, entry.name, entry.named)
    if problem is not None:
        raise RecordValidationError(*problem)
    try:
        _fastavro_validate(record, entry.parsed, raise_errors=True)
    except Exception as exc:
        raise RecordValidationError(entry.name, str(exc)) from exc
    raise RecordValidationError(entry.name, "does not match the schema")


# -- loading and expansion ----------------------------------------------------------------------


def _read_dir(directory: Path) -> list[tuple[Path, Any]]:
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.glob("*.avsc")):
        try:
            out.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{path}: cannot read schema: {exc}") from exc
    return out


def _full_name(name: str, namespace: str) -> tuple[str, str]:
    """(full name, namespace) of ``name`` written in ``namespace``."""
    if "." in name:
        return name, name.rpartition(".")[0]
    return (f"{namespace}.{name}" if namespace else name), namespace


def _collect(schema: Any, namespace: str, into: _Definitions, source: Path | None) -> None:
    """Record every named type defined in ``schema`` under its full name."""
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, namespace, into, source)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if kind in NAMED:
        full, inner_ns = _full_name(schema["name"], schema.get("namespace", namespace))
        if full in into:
            raise CatalogError(f"{source}: {full} is already defined")
        into[full] = (schema, namespace)
        for f in schema.get("fields", ()) if kind in RECORDS else ():
            _collect(f["type"], inner_ns, into, source)
    elif kind == "array":
        _collect(schema.get("items"), namespace, into, source)
    elif kind == "map":
        _collect(schema.get("values"), namespace, into, source)
    elif isinstance(kind, dict | list):
        _collect(kind, namespace, into, source)


def _expand_file(path: Path, schema: Any, definitions: _Definitions) -> SchemaEntry:
    if not isinstance(schema, dict) or schema.get("type") not in NAMED:
        raise CatalogError(f"{path}: the top level must be a named type (record, enum or fixed)")
    expanded = _Expander(definitions, path).expand(schema, "")
    return SchemaEntry.from_expanded(expanded, path)


class _Expander:
    def __init__(self, definitions: _Definitions, source: Path) -> None:
        self._definitions = definitions
        self._source = source
        self._seen: set[str] = set()

    def expand(self, schema: Any, namespace: str) -> Any:
        if isinstance(schema, str):
            return self._reference(schema, namespace)
        if isinstance(schema, list):
            return [self.expand(branch, namespace) for branch in schema]
        kind = schema["type"]
        if kind in NAMED:
            return self._definition(schema, namespace)
        if kind == "array":
            return {**schema, "items": self.expand(schema["items"], namespace)}
        if kind == "map":
            return {**schema, "values": self.expand(schema["values"], namespace)}
        if isinstance(kind, dict | list) or kind not in PRIMITIVES:
            return self.expand(kind, namespace)  # {"type": <schema or name>}
        return dict(schema)  # a primitive with attributes, e.g. a logical type

    def _reference(self, name: str, namespace: str) -> Any:
        if name in PRIMITIVES:
            return name
        full, _ = _full_name(name, namespace)
        if full not in self._definitions and name in self._definitions:
            full = name  # a type in the null namespace
        if full in self._seen:
            return full
        if full not in self._definitions:
            raise CatalogError(f"{self._source}: unknown type {name!r} (looked for {full!r})")
        definition, defined_in = self._definitions[full]
        return self._definition(definition, defined_in)

    def _definition(self, schema: dict[str, Any], namespace: str) -> Any:
        full, inner_ns = _full_name(schema["name"], schema.get("namespace", namespace))
        if full in self._seen:
            return full
        self._seen.add(full)
        # Name and namespace are written out in full so the definition reads the same wherever
        # it is inlined.
        out: dict[str, Any] = {
            "type": schema["type"],
            "name": full.rpartition(".")[2],
            "namespace": inner_ns,
        }
        out.update((k, v) for k, v in schema.items() if k not in out and k != "fields")
        if schema["type"] in RECORDS:
            out["fields"] = [
                {**f, "type": self.expand(f["type"], inner_ns)} for f in schema["fields"]
            ]
        return out


# -- explaining a validation failure ------------------------------------------------------------

_MISSING = object()
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def _explain(
    schema: Any, datum: Any, path: str, named: Mapping[str, dict[str, Any]]
) -> tuple[str, str] | None:
    """(field path, problem) for the first part of ``datum`` that ``schema`` rejects."""
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return None if _primitive_ok(schema, datum) else (path, _expected(schema, datum))
        return _explain(named[schema], datum, path, named)
    if isinstance(schema, list):
        return _explain_union(schema, datum, path, named)
    kind = schema["type"]
    if kind in RECORDS:
        if not isinstance(datum, Mapping):
            return path, _expected(f"record {schema['name']}", datum)
        for f in schema["fields"]:
            field_path = f"{path}.{f['name']}"
            value = datum.get(f["name"], _MISSING)
            if value is _MISSING:
                # The writer fills a default, and otherwise writes None.
                if "default" in f or _explain(f["type"], None, field_path, named) is None:
                    continue
                return field_path, f"required field is missing (expected {_type_name(f['type'])})"
            problem = _explain(f["type"], value, field_path, named)
            if problem is not None:
                return problem
        return None
    if kind == "enum":
        ok = isinstance(datum, str) and datum in schema["symbols"]
        symbols = ", ".join(schema["symbols"])
        # A symbol is a code, not personal data, so the bad value is shown (shortened).
        got = reprlib.repr(datum)
        return None if ok else (path, f"expected one of {schema['name']} ({symbols}), got {got}")
    if kind == "fixed":
        ok = isinstance(datum, bytes) and len(datum) == schema["size"]
        return None if ok else (path, _expected(f"{schema['size']} bytes", datum))
    if kind == "array":
        if not isinstance(datum, Sequence) or isinstance(datum, str | bytes):
            return path, _expected("array", datum)
        for i, item in enumerate(datum):
            if (problem := _explain(schema["items"], item, f"{path}[{i}]", named)) is not None:
                return problem
        return None
    if kind == "map":
        if not isinstance(datum, Mapping):
            return path, _expected("map", datum)
        for key, item in datum.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}]", "map keys must be strings"
            if (problem := _explain(schema["values"], item, f"{path}[{key!r}]", named)) is not None:
                return problem
        return None
    if "logicalType" in schema:
        return None  # logical types accept richer Python values; fastavro's verdict stands
    return _explain(kind, datum, path, named)


def _explain_union(
    branches: list[Any], datum: Any, path: str, named: Mapping[str, dict[str, Any]]
) -> tuple[str, str] | None:
    if any(_explain(b, datum, path, named) is None for b in branches):
        return None
    # Point inside the branch the value was evidently meant for, rather than at the union.
    for branch in branches:
        target = named.get(branch, branch) if isinstance(branch, str) else branch
        kind = target.get("type") if isinstance(target, dict) else None
        if (
            (kind in RECORDS and isinstance(datum, Mapping))
            or (kind == "map" and isinstance(datum, Mapping))
            or (kind == "array" and isinstance(datum, list | tuple))
        ):
            return _explain(target, datum, path, named)
    return path, _expected(" or ".join(_type_name(b) for b in branches), datum)


def _primitive_ok(kind: str, datum: Any) -> bool:
    if kind == "null":
        return datum is None
    if kind == "boolean":
        return isinstance(datum, bool)
    if kind in ("int", "long"):
        low, high = _INT32 if kind == "int" else _INT64
        return isinstance(datum, int) and not isinstance(datum, bool) and low <= datum <= high
    if kind in ("float", "double"):
        return isinstance(datum, int | float) and not isinstance(datum, bool)
    if kind == "bytes":
        return isinstance(datum, bytes | bytearray)
    return isinstance(datum, str)


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema.rpartition(".")[2]
    if isinstance(schema, dict):
        return str(schema.get("name") or schema["type"])
    return "union"


def _expected(what: str, datum: Any) -> str:
    # Only the type of the bad value is named: values are addresses and message text, which do
    # not belong in logs or dead letters.
    return f"expected {what}, got {'None' if datum is None else type(datum).__name__}"
