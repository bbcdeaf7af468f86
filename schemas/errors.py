"""Errors raised by the Avro catalog and codecs.

Every error is a ``SchemaError``; fastavro and schema-registry exceptions never escape, they are
wrapped at the boundary with ``raise ... from exc`` so the cause stays in the traceback::

    SchemaError
    ├── CatalogError                 an .avsc file cannot be read, parsed or resolved
    │   └── SchemaNotFoundError      no schema of that name (also a LookupError); lists the names
    ├── DecodeError                  bytes could not be turned into a record
    │   ├── CorruptMessageError      bad magic byte, truncated or undecodable body   (permanent)
    │   ├── UnknownSchemaError       fingerprint or registry id not known            (permanent)
    │   ├── SchemaMismatchError      writer is another record, or not resolvable     (permanent)
    │   └── RegistryUnavailableError ─┐ the registry could not be asked             (retriable)
    └── EncodeError                   │ a record could not be turned into bytes
        ├── RecordValidationError     │ the record does not match the schema; names the field path
        └── RegistryUnavailableError ─┘ (the same class: raised on both paths)

A stage treats a permanent ``DecodeError`` as a poison message (dead-letter it, keep going) and a
``RegistryUnavailableError`` as transient (retry; the message itself is fine).
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "CorruptMessageError",
    "DecodeError",
    "EncodeError",
    "RecordValidationError",
    "RegistryUnavailableError",
    "SchemaError",
    "SchemaMismatchError",
    "SchemaNotFoundError",
    "UnknownSchemaError",
]


class SchemaError(Exception):
    """Root of every error raised by the ``schemas`` package."""


class CatalogError(SchemaError):
    """An .avsc file cannot be read or parsed, or names a type that is defined nowhere."""


class SchemaNotFoundError(CatalogError, LookupError):
    """No schema of that name is in the catalog."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no Avro schema named {name!r}; known: {', '.join(sorted(known))}")
        self.name = name


class DecodeError(SchemaError):
    """Bytes could not be decoded into a record."""


class CorruptMessageError(DecodeError):
    """The framing is wrong (magic byte, length) or the body does not decode."""


class UnknownSchemaError(DecodeError):
    """The writer schema named by the message (fingerprint or registry id) is not known."""


class SchemaMismatchError(DecodeError):
    """The writer schema is known but cannot be read as the requested reader schema."""


class EncodeError(SchemaError):
    """A record could not be encoded."""


class RecordValidationError(EncodeError):
    """A record does not match its schema.

    ``path`` is the dotted field path from the record name, e.g. ``Notification.recipient.user_id``.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class RegistryUnavailableError(DecodeError, EncodeError):
    """The schema registry failed or could not be reached; retrying may succeed."""
